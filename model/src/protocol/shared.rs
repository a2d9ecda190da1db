//! [`Shared`]: a state component shared between the states the checker
//! keeps (copy on write, as `Arc`), which also remembers its own hash. A
//! step changes one or two components; the checker hashes every state it
//! reaches, so without the memo it would rehash every unchanged component
//! of every successor, again and again.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

/// A copy-on-write component with a memoized hash.
#[derive(Debug, Default)]
pub struct Shared<T>(Arc<(T, OnceLock<u64>)>);

impl<T> Shared<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Shared(Arc::new((value, OnceLock::new())))
    }
}

impl<T: Clone> Shared<T> {
    /// The value, for writing: copied first if other states share it, and
    /// its hash forgotten.
    pub fn make_mut(&mut self) -> &mut T {
        let inner = Arc::make_mut(&mut self.0);
        inner.1 = OnceLock::new();
        &mut inner.0
    }

    /// The value, taken out (copied if shared).
    pub fn unwrap_or_clone(self) -> T {
        Arc::unwrap_or_clone(self.0).0
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0.0
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.0 == other.0.0
    }
}

impl<T: Eq> Eq for Shared<T> {}

impl<T: PartialOrd> PartialOrd for Shared<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.0.0.partial_cmp(&other.0.0)
    }
}

impl<T: Ord> Ord for Shared<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.0.cmp(&other.0.0)
    }
}

impl<T: Hash> Hash for Shared<T> {
    /// Equal values have equal memoized hashes (one deterministic hasher),
    /// so hashing the memo keeps `a == b ⇒ hash(a) == hash(b)`.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let h = *self.0.1.get_or_init(|| {
            let mut hasher = DefaultHasher::new();
            self.0.0.hash(&mut hasher);
            hasher.finish()
        });
        state.write_u64(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of<T: Hash>(v: &T) -> u64 {
        let mut h = DefaultHasher::new();
        v.hash(&mut h);
        h.finish()
    }

    #[test]
    fn a_write_forgets_the_hash_and_equal_values_hash_alike() {
        let mut a = Shared::new(vec![1, 2, 3]);
        let b = Shared::new(vec![1, 2, 3]);
        assert_eq!(hash_of(&a), hash_of(&b));
        let shared = a.clone();
        a.make_mut().push(4);
        assert_ne!(
            hash_of(&a),
            hash_of(&b),
            "the old hash was kept after a write"
        );
        assert_eq!(*shared, vec![1, 2, 3], "a write showed through a copy");
        assert_eq!(hash_of(&shared), hash_of(&b));
        a.make_mut().pop();
        assert_eq!(a, b);
        assert_eq!(hash_of(&a), hash_of(&b));
    }
}
