//! Headers exchanges: bindings match on message headers with `x-match` = all | any (and RabbitMQ's
//! all-with-x / any-with-x). Keys starting with `x-` are ignored unless the "-with-x" form is used; a
//! binding value of type void matches any value for that key; numbers compare across integer widths.

use amq_protocol::types::{AMQPValue, FieldTable};
use warren_protocol::field::{as_bytes, as_number};

use super::Destination;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchKind {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

#[derive(Debug)]
struct HeadersBinding {
    arguments: FieldTable,
    kind: MatchKind,
    destination: Destination,
}

#[derive(Debug, Default)]
pub(crate) struct HeadersRoutes {
    bindings: Vec<HeadersBinding>,
}

fn match_kind(arguments: &FieldTable) -> MatchKind {
    let value = arguments.inner().get("x-match");
    let text = match value {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_string(),
        _ => String::new(),
    };
    match text.as_str() {
        "any" => MatchKind::Any,
        "all-with-x" => MatchKind::AllWithX,
        "any-with-x" => MatchKind::AnyWithX,
        _ => MatchKind::All,
    }
}

/// Whether a binding argument value accepts a header value (RabbitMQ compares within a type class).
fn value_matches(pattern: &AMQPValue, value: &AMQPValue) -> bool {
    if matches!(pattern, AMQPValue::Void) {
        return true;
    }
    match (as_number(pattern), as_number(value)) {
        (Some(a), Some(b)) => return a == b,
        (Some(_), None) | (None, Some(_)) => return false,
        _ => {}
    }
    match (as_bytes(pattern), as_bytes(value)) {
        (Some(a), Some(b)) => return a == b,
        (Some(_), None) | (None, Some(_)) => return false,
        _ => {}
    }
    match (pattern, value) {
        (AMQPValue::Float(a), AMQPValue::Float(b)) => a == b,
        (AMQPValue::Double(a), AMQPValue::Double(b)) => a == b,
        (AMQPValue::Float(a), AMQPValue::Double(b)) => f64::from(*a) == *b,
        (AMQPValue::Double(a), AMQPValue::Float(b)) => *a == f64::from(*b),
        (a, b) => a == b,
    }
}

fn binding_matches(binding: &HeadersBinding, headers: &FieldTable) -> bool {
    let with_x = matches!(binding.kind, MatchKind::AllWithX | MatchKind::AnyWithX);
    let mut considered = binding
        .arguments
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")));
    let hit = |(k, pattern): (&amq_protocol::types::ShortString, &AMQPValue)| {
        headers
            .inner()
            .get(k)
            .is_some_and(|value| value_matches(pattern, value))
    };
    match binding.kind {
        MatchKind::All | MatchKind::AllWithX => considered.all(hit),
        MatchKind::Any | MatchKind::AnyWithX => considered.any(hit),
    }
}

impl HeadersRoutes {
    pub fn add(&mut self, arguments: &FieldTable, destination: Destination) {
        self.bindings.push(HeadersBinding {
            arguments: arguments.clone(),
            kind: match_kind(arguments),
            destination,
        });
    }

    pub fn remove(&mut self, arguments: &FieldTable, destination: &Destination) {
        if let Some(at) = self
            .bindings
            .iter()
            .position(|b| &b.destination == destination && &b.arguments == arguments)
        {
            self.bindings.remove(at);
        }
    }

    pub fn route(&self, headers: &FieldTable, out: &mut Vec<Destination>) {
        out.extend(
            self.bindings
                .iter()
                .filter(|b| binding_matches(b, headers))
                .map(|b| b.destination.clone()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn routes(args: FieldTable, headers: FieldTable) -> bool {
        let mut r = HeadersRoutes::default();
        r.add(&args, Destination::Exchange("d".into()));
        let mut out = Vec::new();
        r.route(&headers, &mut out);
        !out.is_empty()
    }

    #[test]
    fn all_any_void_and_numeric_classes() {
        let s = |x: &str| AMQPValue::LongString(LongString::from(x));
        let all = table(&[
            ("x-match", s("all")),
            ("a", s("1")),
            ("b", AMQPValue::LongInt(2)),
        ]);
        assert!(routes(
            all.clone(),
            table(&[("a", s("1")), ("b", AMQPValue::ShortShortInt(2))])
        ));
        assert!(!routes(all.clone(), table(&[("a", s("1"))])));
        let any = table(&[("x-match", s("any")), ("a", s("1")), ("b", s("2"))]);
        assert!(routes(any.clone(), table(&[("b", s("2"))])));
        assert!(!routes(any, table(&[("b", s("3"))])));
        assert!(routes(
            table(&[("a", AMQPValue::Void)]),
            table(&[("a", s("anything"))])
        ));
        assert!(
            routes(table(&[("x-match", s("all"))]), FieldTable::default()),
            "no conditions: all matches"
        );
        assert!(
            !routes(table(&[("x-match", s("any"))]), FieldTable::default()),
            "no conditions: any fails"
        );
        assert!(
            !routes(
                table(&[("a", s("1"))]),
                table(&[("a", AMQPValue::LongInt(1))])
            ),
            "type classes differ"
        );
        let with_x = table(&[("x-match", s("all-with-x")), ("x-k", s("v"))]);
        assert!(routes(with_x.clone(), table(&[("x-k", s("v"))])));
        assert!(!routes(with_x, FieldTable::default()));
    }
}
