//! Topic exchanges: binding keys compiled into a word trie where `*` matches exactly one word and `#`
//! matches zero or more, with RabbitMQ's word splitting (an empty key has no words; `a..b` has an empty
//! middle word). Matching walks the trie once per message instead of testing a pattern per binding.

use std::collections::HashMap;

use super::Destination;

#[derive(Debug, Default)]
pub(crate) struct TopicTrie {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    words: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    destinations: Vec<Destination>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
            && self.destinations.is_empty()
    }
}

/// RabbitMQ's `split_topic_key`: "" is no words, otherwise split on every dot.
pub(crate) fn words(key: &str) -> impl Iterator<Item = &str> {
    let mut it = (!key.is_empty()).then(|| key.split('.'));
    std::iter::from_fn(move || it.as_mut()?.next())
}

impl TopicTrie {
    pub fn add(&mut self, binding_key: &str, destination: Destination) {
        let mut node = &mut self.root;
        for word in words(binding_key) {
            node = match word {
                "*" => node.star.get_or_insert_with(Default::default),
                "#" => node.hash.get_or_insert_with(Default::default),
                w => node.words.entry(w.into()).or_default(),
            };
        }
        node.destinations.push(destination);
    }

    pub fn remove(&mut self, binding_key: &str, destination: &Destination) {
        let path: Vec<&str> = words(binding_key).collect();
        remove_at(&mut self.root, &path, destination);
    }

    pub fn route(&self, routing_key: &str, out: &mut Vec<Destination>) {
        let key: Vec<&str> = words(routing_key).collect();
        collect(&self.root, &key, out);
    }
}

/// Removes one occurrence of `destination` at `path`, pruning nodes left empty. Returns whether the
/// node itself is now empty.
fn remove_at(node: &mut Node, path: &[&str], destination: &Destination) -> bool {
    match path.split_first() {
        None => {
            if let Some(at) = node.destinations.iter().position(|d| d == destination) {
                node.destinations.remove(at);
            }
        }
        Some((&"*", rest)) => {
            if node
                .star
                .as_mut()
                .is_some_and(|c| remove_at(c, rest, destination))
            {
                node.star = None;
            }
        }
        Some((&"#", rest)) => {
            if node
                .hash
                .as_mut()
                .is_some_and(|c| remove_at(c, rest, destination))
            {
                node.hash = None;
            }
        }
        Some((word, rest)) => {
            if node
                .words
                .get_mut(*word)
                .is_some_and(|c| remove_at(c, rest, destination))
            {
                node.words.remove(*word);
            }
        }
    }
    node.is_empty()
}

fn collect(node: &Node, key: &[&str], out: &mut Vec<Destination>) {
    if let Some(hash) = &node.hash {
        // `#` consumes any number of words, zero included.
        for skip in 0..=key.len() {
            collect(hash, &key[skip..], out);
        }
    }
    match key.split_first() {
        None => out.extend(node.destinations.iter().cloned()),
        Some((word, rest)) => {
            if let Some(child) = node.words.get(*word) {
                collect(child, rest, out);
            }
            if let Some(star) = &node.star {
                collect(star, rest, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(binding: &str, key: &str) -> bool {
        let mut t = TopicTrie::default();
        t.add(binding, Destination::Exchange("d".into()));
        let mut out = Vec::new();
        t.route(key, &mut out);
        !out.is_empty()
    }

    #[test]
    fn star_and_hash_as_rabbitmq() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#", "", true),
            ("#", "a.b", true),
            ("*", "", false),
            ("*", "a", true),
            ("*.b", "b", false),
            ("#.b", "b", true),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.x.y.c", true),
            ("a.#.c", "a.x.y", false),
            ("", "", true),
            ("", "a", false),
            ("a..b", "a..b", true),
            ("a.*.b", "a..b", true),
            ("#.#", "a", true),
            ("*.*", "a", false),
            ("a.#.#", "a", true),
            ("a.*", "a.", true),
        ];
        for (binding, key, expected) in cases {
            assert_eq!(
                matches(binding, key),
                expected,
                "binding {binding:?} key {key:?}"
            );
        }
    }

    #[test]
    fn removal_prunes_and_keeps_other_bindings() {
        let mut t = TopicTrie::default();
        let d1 = Destination::Exchange("1".into());
        let d2 = Destination::Exchange("2".into());
        t.add("a.*", d1.clone());
        t.add("a.#", d2.clone());
        t.remove("a.*", &d1);
        let mut out = Vec::new();
        t.route("a.b", &mut out);
        assert_eq!(out, vec![d2.clone()]);
        t.remove("a.#", &d2);
        assert!(t.root.is_empty());
    }
}
