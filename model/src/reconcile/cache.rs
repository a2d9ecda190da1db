//! A watcher's local cache of one kind (PROTO-1..PROTO-3): events are applied
//! in resourceVersion order, stale events are ignored, and a relist replaces
//! the whole content.

use std::collections::BTreeMap;

use crate::cluster::{EndpointSlice, ObjectKey, Pod, Service};

/// Objects with a namespaced key.
pub trait Keyed {
    /// The object's key.
    fn key(&self) -> ObjectKey;
}

impl Keyed for Service {
    fn key(&self) -> ObjectKey {
        self.key.clone()
    }
}
impl Keyed for Pod {
    fn key(&self) -> ObjectKey {
        self.key.clone()
    }
}
impl Keyed for EndpointSlice {
    fn key(&self) -> ObjectKey {
        self.key.clone()
    }
}

/// One watch event, with the resourceVersion the API server gave it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WatchEvent<T> {
    /// Added or modified.
    Applied(T, u64),
    /// Deleted.
    Deleted(ObjectKey, u64),
    /// A fresh list replacing everything (after start, a dropped watch or a
    /// compaction): objects with their resourceVersions.
    Relisted(Vec<(T, u64)>),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Entry<T> {
    rv: u64,
    /// `None` is a tombstone: deleted at `rv`.
    obj: Option<T>,
}

/// A cache of one kind of object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WatchCache<T> {
    entries: BTreeMap<ObjectKey, Entry<T>>,
}

impl<T> Default for WatchCache<T> {
    fn default() -> Self {
        WatchCache {
            entries: BTreeMap::new(),
        }
    }
}

impl<T: Keyed + Clone + PartialEq> WatchCache<T> {
    /// Applies one event; returns true if the cache's visible content changed.
    /// PROTO-1: an event older than what the cache holds for that key (for
    /// example the echo of the watcher's own write) changes nothing.
    pub fn apply(&mut self, event: WatchEvent<T>) -> bool {
        match event {
            WatchEvent::Applied(obj, rv) => self.put(obj.key(), rv, Some(obj)),
            WatchEvent::Deleted(key, rv) => self.put(key, rv, None),
            WatchEvent::Relisted(objs) => {
                let before: Vec<&T> = self.objects().collect();
                let changed = before.len() != objs.len()
                    || before.iter().zip(&objs).any(|(a, (b, _))| *a != b);
                self.entries = objs
                    .into_iter()
                    .map(|(o, rv)| (o.key(), Entry { rv, obj: Some(o) }))
                    .collect();
                changed
            }
        }
    }

    fn put(&mut self, key: ObjectKey, rv: u64, obj: Option<T>) -> bool {
        if let Some(e) = self.entries.get(&key)
            && e.rv >= rv
        {
            return false;
        }
        let changed = self.get(&key) != obj.as_ref();
        self.entries.insert(key, Entry { rv, obj });
        changed
    }

    /// The object under `key`, if present.
    pub fn get(&self, key: &ObjectKey) -> Option<&T> {
        self.entries.get(key).and_then(|e| e.obj.as_ref())
    }

    /// Present objects in key order.
    pub fn objects(&self) -> impl Iterator<Item = &T> {
        self.entries.values().filter_map(|e| e.obj.as_ref())
    }

    /// The number of present objects (tombstones, kept so that a late older
    /// event cannot resurrect a deleted object, are not counted).
    pub fn len(&self) -> usize {
        self.objects().count()
    }

    /// True when no object is present.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{AddressFamily, EndpointSlice};

    fn slice(name: &str, n: usize) -> EndpointSlice {
        EndpointSlice {
            key: ObjectKey::new("default", name),
            service: "voy".into(),
            family: AddressFamily::V4,
            ports: Vec::new(),
            endpoints: Vec::with_capacity(n),
        }
    }

    #[test]
    fn stale_events_do_not_resurrect() {
        let mut c = WatchCache::default();
        assert!(c.apply(WatchEvent::Applied(slice("a", 0), 5)));
        assert!(c.apply(WatchEvent::Deleted(ObjectKey::new("default", "a"), 7)));
        assert!(
            !c.apply(WatchEvent::Applied(slice("a", 0), 6)),
            "older than the delete"
        );
        assert!(c.is_empty());
        assert!(c.apply(WatchEvent::Relisted(vec![(slice("b", 0), 9)])));
        assert_eq!(c.len(), 1);
        assert!(!c.apply(WatchEvent::Relisted(vec![(slice("b", 0), 9)])));
    }
}
