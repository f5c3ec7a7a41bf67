//! One shard's topic index: for each topic its streams carry, the slab keys of those streams.
//! Pure: the shard joins a stream to its topics when it starts and leaves them when it goes;
//! the fan-out walks one topic's subscribers.
//!
//! A stream remembers, per topic, the topic's index here and its own slot in the topic's
//! subscriber list ([`Membership`]), so leaving is O(1) per topic however many streams a
//! topic has.

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

/// Where one stream sits in one topic: the topic's index and the stream's slot in it.
pub type Membership = (u32, u32);

/// The topics a shard's streams carry.
#[derive(Debug, Default)]
pub struct Topics {
    by_name: HashMap<Arc<str>, u32>,
    list: Slab<Topic>,
}

#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    /// Slab keys of the subscribed streams.
    subscribers: Slab<usize>,
}

impl Topics {
    /// Adds stream `key` to topic `name` (created if new).
    pub fn join(&mut self, name: Arc<str>, key: usize) -> Membership {
        let t = match self.by_name.get(&name) {
            Some(&t) => t,
            None => {
                let t = self.list.insert(Topic {
                    name: name.clone(),
                    subscribers: Slab::new(),
                }) as u32;
                self.by_name.insert(name, t);
                t
            }
        };
        let slot = self.list[t as usize].subscribers.insert(key) as u32;
        (t, slot)
    }

    /// Removes a stream from a topic it joined; a topic left empty is dropped. Returns the
    /// topic's name.
    pub fn leave(&mut self, (t, slot): Membership) -> Option<Arc<str>> {
        let topic = self.list.get_mut(t as usize)?;
        topic.subscribers.try_remove(slot as usize)?;
        let name = topic.name.clone();
        if topic.subscribers.is_empty() {
            self.list.remove(t as usize);
            self.by_name.remove(&name);
        }
        Some(name)
    }

    /// The streams subscribed to `name` on this shard.
    pub fn subscribers(&self, name: &str) -> impl Iterator<Item = usize> + '_ {
        self.by_name
            .get(name)
            .and_then(|&t| self.list.get(t as usize))
            .into_iter()
            .flat_map(|topic| topic.subscribers.iter().map(|(_, &key)| key))
    }

    /// The name of the topic a membership is in.
    pub fn name(&self, (t, _): Membership) -> Option<&Arc<str>> {
        self.list.get(t as usize).map(|topic| &topic.name)
    }

    /// How many topics this shard's streams carry.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether no stream carries any topic.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn streams_join_and_leave_and_empty_topics_go() {
        let mut topics = Topics::default();
        let a1 = topics.join(name("a"), 1);
        let a2 = topics.join(name("a"), 2);
        let b1 = topics.join(name("b"), 1);
        assert_eq!(topics.subscribers("a").collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(topics.len(), 2);
        assert_eq!(topics.leave(a1).as_deref(), Some("a"));
        assert_eq!(topics.subscribers("a").collect::<Vec<_>>(), vec![2]);
        assert_eq!(topics.leave(b1).as_deref(), Some("b"));
        assert_eq!(topics.subscribers("b").count(), 0);
        assert_eq!(topics.name(a2).map(|n| &**n), Some("a"));
        topics.leave(a2);
        assert!(topics.is_empty());
        // Leaving twice is harmless.
        assert_eq!(topics.leave(a2), None);
    }

    #[test]
    fn names_are_shared_not_copied() {
        let mut topics = Topics::default();
        let shared = name("news");
        let m = topics.join(shared.clone(), 7);
        assert!(Arc::ptr_eq(topics.name(m).unwrap(), &shared));
    }
}
