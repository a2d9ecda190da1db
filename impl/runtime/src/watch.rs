//! Watches: a kube watcher with the default backoff whose errors are logged
//! and counted instead of ending the stream, optionally through a
//! reflector store, and [`Known`], the keys that vanished across a relist
//! (a relist after a 410 or a restart sends no Delete for them).

use std::collections::HashSet;

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::Object;
use crate::metrics::Counter;

pub use kube::runtime::watcher::{Config, Event};

/// Events of one kind; a watch error is logged, counted in `errors` and
/// retried with backoff, and the stream goes on.
pub fn events<K: Object>(
    api: Api<K>,
    cfg: Config,
    kind: &'static str,
    errors: Counter,
) -> BoxStream<'static, Event<K>> {
    without_errors(watcher(api, cfg).default_backoff(), kind, errors)
}

/// [`events`] through a reflector: the store holds every object seen.
pub fn reflect<K: Object>(
    api: Api<K>,
    cfg: Config,
    kind: &'static str,
    errors: Counter,
) -> (Store<K>, BoxStream<'static, Event<K>>) {
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff());
    (store, without_errors(stream, kind, errors))
}

fn without_errors<K: Object>(
    s: impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    kind: &'static str,
    errors: Counter,
) -> BoxStream<'static, Event<K>> {
    s.filter_map(move |ev| {
        let errors = errors.clone();
        async move {
            match ev {
                Ok(ev) => Some(ev),
                Err(e) => {
                    errors.inc();
                    tracing::warn!(kind, error = %e, "watch failed; keeping the last state and retrying with backoff");
                    None
                }
            }
        }
    })
    .boxed()
}

/// An object's identity: namespace and name.
pub type Key = (String, String);

/// The key of an object.
pub fn key<K: kube::Resource>(obj: &K) -> Key {
    let m = obj.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// The objects a watch has shown, so that a relist can say which vanished
/// while the watch was down.
#[derive(Debug, Default)]
pub struct Known {
    known: HashSet<Key>,
    relisted: HashSet<Key>,
}

impl Known {
    /// Follows one event; at the end of a relist, returns the keys known
    /// before that the relist did not show (treat them as deleted).
    pub fn observe<K: kube::Resource>(&mut self, ev: &Event<K>) -> Vec<Key> {
        match ev {
            Event::Init => self.relisted.clear(),
            Event::InitApply(o) => {
                self.relisted.insert(key(o));
            }
            Event::InitDone => {
                let gone = self.known.difference(&self.relisted).cloned().collect();
                self.known = std::mem::take(&mut self.relisted);
                return gone;
            }
            Event::Apply(o) => {
                self.known.insert(key(o));
            }
            Event::Delete(o) => {
                self.known.remove(&key(o));
            }
        }
        Vec::new()
    }

    /// How many objects are known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// No object known.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(name: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some("ns".into());
        c
    }

    #[test]
    fn a_relist_reports_what_vanished_while_the_watch_was_down() {
        let mut k = Known::default();
        for ev in [
            Event::Init,
            Event::InitApply(cm("a")),
            Event::InitApply(cm("b")),
        ] {
            assert!(k.observe(&ev).is_empty());
        }
        assert!(k.observe(&Event::<ConfigMap>::InitDone).is_empty());
        assert!(k.observe(&Event::Apply(cm("c"))).is_empty());
        // The watch broke; b and c were deleted meanwhile; d is new.
        k.observe(&Event::<ConfigMap>::Init);
        k.observe(&Event::InitApply(cm("a")));
        k.observe(&Event::InitApply(cm("d")));
        let mut gone = k.observe(&Event::<ConfigMap>::InitDone);
        gone.sort();
        assert_eq!(gone, [("ns".into(), "b".into()), ("ns".into(), "c".into())]);
        assert_eq!(k.len(), 2);
    }
}
