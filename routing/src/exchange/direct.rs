//! Direct exchanges: a message goes to the bindings whose key equals its routing key.

use std::collections::HashMap;

use super::Destination;

#[derive(Debug, Default)]
pub(crate) struct DirectRoutes {
    by_key: HashMap<String, Vec<Destination>>,
}

impl DirectRoutes {
    pub fn add(&mut self, key: &str, destination: Destination) {
        self.by_key
            .entry(key.to_string())
            .or_default()
            .push(destination);
    }

    pub fn remove(&mut self, key: &str, destination: &Destination) {
        if let Some(list) = self.by_key.get_mut(key) {
            if let Some(at) = list.iter().position(|d| d == destination) {
                list.swap_remove(at);
            }
            if list.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    pub fn route(&self, key: &str, out: &mut Vec<Destination>) {
        if let Some(list) = self.by_key.get(key) {
            out.extend(list.iter().cloned());
        }
    }
}
