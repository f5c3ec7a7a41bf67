//! One shard's topic index: for each topic its streams carry, the slab keys of those streams.
//! Pure: the shard joins a stream to its topics when it starts and leaves them when it goes;
//! the fan-out walks one topic's subscribers.
//!
//! A topic's subscribers are a dense array of 4-byte keys: the fan-out walks contiguous
//! memory, and a subscriber costs 4 bytes. A stream remembers, per topic, the topic's index
//! here and its own slot in that array ([`Membership`]), so leaving is O(1): the last
//! subscriber moves into the slot left free, and the caller updates the moved stream's
//! membership ([`Left::moved`]).

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
    /// Slab keys of the streams carrying it, in no particular order.
    subscribers: Vec<u32>,
}

/// What leaving a topic did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Left {
    /// The topic's name, if the membership was current.
    pub name: Option<Arc<str>>,
    /// Another stream moved into the freed slot: its key, its old membership and its new one.
    pub moved: Option<(usize, Membership, Membership)>,
}

/// The topics a stream is opened on: one inline (most streams carry one topic), more on the
/// heap. A stream keeps the first inline and the others boxed ([`crate::delivery::stream::Stream`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subs {
    /// One topic.
    One(Membership),
    /// Several (or none).
    Many(Box<[Membership]>),
}

impl Subs {
    /// The memberships, in the order given.
    pub fn new(memberships: Vec<Membership>) -> Subs {
        match memberships.as_slice() {
            [one] => Subs::One(*one),
            _ => Subs::Many(memberships.into_boxed_slice()),
        }
    }

    /// Every membership.
    pub fn iter(&self) -> impl Iterator<Item = Membership> + '_ {
        let slice: &[Membership] = match self {
            Subs::One(one) => std::slice::from_ref(one),
            Subs::Many(many) => many,
        };
        slice.iter().copied()
    }

    /// Replaces membership `old` with `new` (the topic moved this stream to another slot).
    pub fn relocate(&mut self, old: Membership, new: Membership) {
        let slice: &mut [Membership] = match self {
            Subs::One(one) => std::slice::from_mut(one),
            Subs::Many(many) => many,
        };
        if let Some(m) = slice.iter_mut().find(|m| **m == old) {
            *m = new;
        }
    }
}

impl Topics {
    /// Adds stream `key` to topic `name`; returns where it sits.
    pub fn join(&mut self, name: Arc<str>, key: usize) -> Membership {
        let t = match self.by_name.get(&name) {
            Some(&t) => t,
            None => {
                let t = self.list.insert(Topic {
                    name: name.clone(),
                    subscribers: Vec::new(),
                }) as u32;
                self.by_name.insert(name, t);
                t
            }
        };
        let subscribers = &mut self.list[t as usize].subscribers;
        if subscribers.len() == 4096 {
            // A crowded topic jumps to 128 KiB, the allocator's threshold for mapped memory:
            // it then grows by remapping, not by leaving each outgrown copy in the heap.
            subscribers.reserve_exact(32 * 1024 - subscribers.len());
        }
        // Slab keys stay far below u32::MAX: the stream quota bounds them.
        subscribers.push(key as u32);
        (t, (subscribers.len() - 1) as u32)
    }

    /// Removes stream `key` from the topic of membership `m`; a topic left without streams
    /// is dropped. A membership that is not `key`'s (already left) changes nothing.
    pub fn leave(&mut self, (t, slot): Membership, key: usize) -> Left {
        let Some(topic) = self.list.get_mut(t as usize) else {
            return Left::default();
        };
        let subscribers = &mut topic.subscribers;
        if subscribers.get(slot as usize) != Some(&(key as u32)) {
            return Left::default();
        }
        subscribers.swap_remove(slot as usize);
        let moved = subscribers.get(slot as usize).map(|&other| {
            let old = (t, subscribers.len() as u32);
            (other as usize, old, (t, slot))
        });
        let name = topic.name.clone();
        if subscribers.is_empty() {
            self.list.remove(t as usize);
            self.by_name.remove(&name);
        } else if subscribers.capacity() > 64 && subscribers.len() < subscribers.capacity() / 4 {
            // A topic that had many subscribers and has few now gives the memory back.
            subscribers.shrink_to(subscribers.len() * 2);
        }
        Left {
            name: Some(name),
            moved,
        }
    }

    /// The slab keys of the streams carrying `name`.
    pub fn subscribers(&self, name: &str) -> impl Iterator<Item = usize> + '_ {
        self.by_name
            .get(name)
            .and_then(|&t| self.list.get(t as usize))
            .into_iter()
            .flat_map(|topic| topic.subscribers.iter().map(|&key| key as usize))
    }

    /// The name of the topic of membership `m`.
    pub fn name(&self, (t, _): Membership) -> Option<&Arc<str>> {
        self.list.get(t as usize).map(|topic| &topic.name)
    }

    /// How many topics have streams on this shard.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether no topic has a stream on this shard.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        let left = topics.leave(a1, 1);
        assert_eq!(left.name.as_deref(), Some("a"));
        // Stream 2 moved into slot 0.
        assert_eq!(left.moved, Some((2, a2, (a2.0, 0))));
        assert_eq!(topics.subscribers("a").collect::<Vec<_>>(), vec![2]);
        assert_eq!(topics.leave(b1, 1).name.as_deref(), Some("b"));
        assert_eq!(topics.subscribers("b").count(), 0);
        assert_eq!(topics.name(a2).map(|n| &**n), Some("a"));
        assert_eq!(topics.leave((a2.0, 0), 2).name.as_deref(), Some("a"));
        assert!(topics.is_empty());
        // Leaving twice is harmless.
        assert_eq!(topics.leave((a2.0, 0), 2), Left::default());
    }

    #[test]
    fn names_are_shared_not_copied() {
        let mut topics = Topics::default();
        let shared = name("news");
        let m = topics.join(shared.clone(), 7);
        assert!(Arc::ptr_eq(topics.name(m).unwrap(), &shared));
    }

    #[test]
    fn one_topic_is_inline() {
        let subs = Subs::new(vec![(3, 4)]);
        assert_eq!(subs, Subs::One((3, 4)));
        assert_eq!(subs.iter().collect::<Vec<_>>(), vec![(3, 4)]);
        assert_eq!(
            std::mem::size_of::<Subs>(),
            16,
            "a boxed slice's size, no more"
        );
    }

    proptest! {
        /// Any order of joins and leaves, with each moved stream's membership updated as
        /// `Left::moved` says, keeps every stream findable at its slot and nowhere else.
        #[test]
        fn memberships_stay_true_whatever_leaves(ops in proptest::collection::vec((0usize..40, 0u8..3), 1..200)) {
            let mut topics = Topics::default();
            let names = [name("a"), name("b"), name("c")];
            // key -> (topic index in names, membership)
            let mut joined: std::collections::BTreeMap<(usize, u8), Membership> = Default::default();
            for (key, topic) in ops {
                if let Some(m) = joined.remove(&(key, topic)) {
                    let left = topics.leave(m, key);
                    prop_assert!(left.name.is_some());
                    if let Some((other, old, new)) = left.moved {
                        let entry = joined
                            .iter_mut()
                            .find(|(&(k, _), &mut m)| k == other && m == old)
                            .map(|(_, m)| m);
                        prop_assert!(entry.is_some(), "moved stream {other} was at {old:?}");
                        if let Some(m) = entry {
                            *m = new;
                        }
                    }
                } else {
                    let m = topics.join(names[topic as usize].clone(), key);
                    joined.insert((key, topic), m);
                }
                for (i, n) in names.iter().enumerate() {
                    let mut want: Vec<usize> = joined
                        .keys()
                        .filter(|(_, t)| *t as usize == i)
                        .map(|(k, _)| *k)
                        .collect();
                    let mut got: Vec<usize> = topics.subscribers(n).collect();
                    want.sort_unstable();
                    got.sort_unstable();
                    prop_assert_eq!(want, got);
                }
                for (&(key, _), &m) in &joined {
                    prop_assert_eq!(topics.list[m.0 as usize].subscribers[m.1 as usize], key as u32);
                }
            }
        }
    }
}
