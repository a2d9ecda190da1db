//! Reading API objects into the model: an object the API server admitted
//! but the model cannot read is logged and counted, never fatal, and where
//! a component had a good form of it before, that form is kept
//! ([`LastGood`]) rather than the object vanishing (which would delete its
//! records, virtual services or slices).

use std::collections::HashMap;
use std::sync::Arc;

use crate::metrics::Counter;

/// Converts one object; on failure logs a warning and counts it in `invalid`.
pub fn read<K, M, E>(obj: &K, kind: &'static str, invalid: &Counter) -> Option<M>
where
    K: kube::Resource,
    M: for<'a> TryFrom<&'a K, Error = E>,
    E: std::fmt::Display,
{
    read_with(obj, kind, invalid, |o| M::try_from(o))
}

/// [`read`] with a conversion function.
pub fn read_with<K, M, E>(
    obj: &K,
    kind: &'static str,
    invalid: &Counter,
    f: impl FnOnce(&K) -> Result<M, E>,
) -> Option<M>
where
    K: kube::Resource,
    E: std::fmt::Display,
{
    match f(obj) {
        Ok(m) => Some(m),
        Err(e) => {
            invalid.inc();
            tracing::warn!(kind, object = %crate::display_key(obj), error = %e, "cannot read this object; keeping what was known of it");
            None
        }
    }
}

/// An object's identity for [`LastGood`]: namespace, name and UID (a
/// re-created object is another one).
pub type Uid = (String, String, String);

fn uid<K: kube::Resource>(o: &K) -> Uid {
    let m = o.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
        m.uid.clone().unwrap_or_default(),
    )
}

/// The last form of each object that converted, with the resourceVersion
/// it was read at: an object whose version has not moved is not read again.
#[derive(Debug)]
pub struct LastGood<M> {
    kind: &'static str,
    good: HashMap<Uid, Known<M>>,
    /// Counts [`LastGood::convert_all`] rounds, to forget objects a round did not see.
    round: u64,
}

#[derive(Debug)]
struct Known<M> {
    version: Option<String>,
    model: M,
    round: u64,
}

impl<M: Clone> LastGood<M> {
    /// Empty, for objects of `kind` (in logs).
    pub fn new(kind: &'static str) -> Self {
        LastGood {
            kind,
            good: HashMap::new(),
            round: 0,
        }
    }

    /// Converts every object of a cache: an object that does not convert
    /// contributes its last good form (counted and logged), one never good
    /// is skipped; objects no longer in the cache are forgotten. An object
    /// at the resourceVersion it was last read at is not read again (a
    /// cache of thousands of objects is converted on every change).
    pub fn convert_all<K, E>(&mut self, objs: Vec<Arc<K>>, invalid: &Counter) -> Vec<M>
    where
        K: kube::Resource,
        M: for<'a> TryFrom<&'a K, Error = E>,
        E: std::fmt::Display,
    {
        self.round += 1;
        let round = self.round;
        let mut out = Vec::with_capacity(objs.len());
        for o in objs {
            let key = uid(&*o);
            let version = o.meta().resource_version.as_deref();
            if let Some(k) = self.good.get_mut(&key)
                && version.is_some()
                && k.version.as_deref() == version
            {
                k.round = round;
                out.push(k.model.clone());
                continue;
            }
            match M::try_from(&*o) {
                Ok(m) => {
                    out.push(m.clone());
                    self.good.insert(
                        key,
                        Known {
                            version: version.map(str::to_owned),
                            model: m,
                            round,
                        },
                    );
                }
                Err(e) => {
                    invalid.inc();
                    let name = crate::display_key(&*o);
                    match self.good.get_mut(&key) {
                        Some(k) => {
                            tracing::warn!(kind = self.kind, %name, error = %e, "cannot read this version; keeping its last good state");
                            k.round = round;
                            out.push(k.model.clone());
                        }
                        None => {
                            tracing::warn!(kind = self.kind, %name, error = %e, "skipping an object that never converted");
                        }
                    }
                }
            }
        }
        self.good.retain(|_, k| k.round == round);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[derive(Clone, Debug, PartialEq)]
    struct Val(String);
    impl TryFrom<&ConfigMap> for Val {
        type Error = String;
        fn try_from(c: &ConfigMap) -> Result<Self, String> {
            c.data
                .as_ref()
                .and_then(|d| d.get("v"))
                .filter(|v| !v.is_empty())
                .map(|v| Val(v.clone()))
                .ok_or_else(|| "no v".into())
        }
    }

    fn cm(name: &str, v: &str) -> Arc<ConfigMap> {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.uid = Some(format!("uid-{name}"));
        c.data = Some([("v".to_owned(), v.to_owned())].into());
        Arc::new(c)
    }

    #[test]
    fn a_bad_version_keeps_the_last_good_one_and_is_counted() {
        let invalid = Counter::default();
        let mut lg = LastGood::<Val>::new("ConfigMap");
        assert_eq!(
            lg.convert_all(vec![cm("a", "1"), cm("b", "")], &invalid),
            [Val("1".into())]
        );
        assert_eq!(invalid.get(), 1);
        assert_eq!(
            lg.convert_all(vec![cm("a", ""), cm("b", "2")], &invalid),
            [Val("1".into()), Val("2".into())]
        );
        assert_eq!(invalid.get(), 2);
        // Gone from the cache: forgotten, so a later bad version is skipped.
        lg.convert_all(vec![cm("b", "2")], &invalid);
        assert_eq!(lg.convert_all(vec![cm("a", "")], &invalid), []);
    }

    #[test]
    fn an_object_at_the_version_it_was_read_at_is_not_read_again() {
        let invalid = Counter::default();
        let mut lg = LastGood::<Val>::new("ConfigMap");
        let at = |v: &str, rv: &str| {
            let mut c = (*cm("a", v)).clone();
            c.metadata.resource_version = Some(rv.into());
            Arc::new(c)
        };
        assert_eq!(
            lg.convert_all(vec![at("1", "10")], &invalid),
            [Val("1".into())]
        );
        // Same version: the form read before (a version names one content).
        assert_eq!(
            lg.convert_all(vec![at("changed", "10")], &invalid),
            [Val("1".into())]
        );
        // A new version is read.
        assert_eq!(
            lg.convert_all(vec![at("changed", "11")], &invalid),
            [Val("changed".into())]
        );
        // A bad new version keeps the last good form, and is retried next time.
        assert_eq!(
            lg.convert_all(vec![at("", "12")], &invalid),
            [Val("changed".into())]
        );
        assert_eq!(
            lg.convert_all(vec![at("", "12")], &invalid),
            [Val("changed".into())]
        );
        assert_eq!(invalid.get(), 2);
    }
}
