//! A vector of reusable slots whose indexes are mio tokens (the slab idea, in 60 lines).

/// Values stored at stable indexes; a freed index is reused by the next insert.
#[derive(Debug)]
pub struct Slots<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Slots<T> {
    /// Empty, with room for `n` values.
    pub fn with_capacity(n: usize) -> Slots<T> {
        Slots {
            entries: Vec::with_capacity(n),
            free: Vec::new(),
        }
    }

    /// The index the next [`Slots::insert`] will use (to register a token before inserting).
    pub fn next_key(&self) -> usize {
        self.free.last().copied().unwrap_or(self.entries.len())
    }

    /// Stores `value` at [`Slots::next_key`] and returns that index.
    pub fn insert(&mut self, value: T) -> usize {
        match self.free.pop() {
            Some(key) => {
                self.entries[key] = Some(value);
                key
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: usize) -> Option<&T> {
        self.entries.get(key)?.as_ref()
    }

    /// The value at `key`, if any.
    pub fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.entries.get_mut(key)?.as_mut()
    }

    /// Takes the value at `key` out; `None` if the slot was empty.
    pub fn remove(&mut self, key: usize) -> Option<T> {
        let value = self.entries.get_mut(key)?.take()?;
        self.free.push(key);
        Some(value)
    }

    /// Every stored value with its index.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(key, v)| Some((key, v.as_ref()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;

    #[test]
    fn keys_are_stable_and_reused() {
        let mut s = Slots::with_capacity(2);
        assert_eq!(s.next_key(), 0);
        assert_eq!(s.insert("a"), 0);
        assert_eq!(s.insert("b"), 1);
        assert_eq!(s.remove(0), Some("a"));
        assert_eq!(s.remove(0), None);
        assert_eq!(s.next_key(), 0);
        assert_eq!(s.insert("c"), 0);
        assert_eq!(s.get(1), Some(&"b"));
        assert_eq!(
            s.iter().map(|(k, v)| (k, *v)).collect::<Vec<_>>(),
            vec![(0, "c"), (1, "b")]
        );
        assert!(s.get_mut(7).is_none());
    }
}
