//! Fanout exchanges: every binding receives every message; keys are ignored.

use super::Destination;

#[derive(Debug, Default)]
pub(crate) struct FanoutRoutes {
    all: Vec<Destination>,
}

impl FanoutRoutes {
    pub fn add(&mut self, destination: Destination) {
        self.all.push(destination);
    }

    pub fn remove(&mut self, destination: &Destination) {
        if let Some(at) = self.all.iter().position(|d| d == destination) {
            self.all.swap_remove(at);
        }
    }

    pub fn route(&self, out: &mut Vec<Destination>) {
        out.extend(self.all.iter().cloned());
    }
}
