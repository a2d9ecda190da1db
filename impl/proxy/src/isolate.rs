//! Finding the virtual services the kernel refuses, so that one Service it
//! cannot program (an SCTP port where SCTP is not loaded, an address family
//! the node lacks) costs only that Service and never the node's whole table.
//!
//! Pure: [`Isolate`] proposes tables to apply, the data plane applies each
//! one as a transaction over what the kernel holds and reports whether it
//! took it; [`Refused`] remembers the refused entries between syncs.

use signpost_model::cluster::{ProxyTable, VirtualKey, VirtualService};

/// One difference to apply: a key and its wanted entry (`None`: delete it).
type Entry = (VirtualKey, Option<VirtualService>);

/// A search by halves for the entries the kernel refuses: the differences
/// between what the kernel holds and what is wanted are tried in chunks;
/// a refused chunk is split until single entries are left, which are the
/// refused ones. With r refused entries among n, about 2·r·log₂(n)
/// transactions are tried.
#[derive(Debug, Clone)]
pub struct Isolate {
    applied: ProxyTable,
    pending: Vec<Vec<Entry>>,
    refused: Vec<Entry>,
    taken: usize,
}

impl Isolate {
    /// A search from `have` (what the kernel holds) towards `want`.
    pub fn new(have: ProxyTable, want: &ProxyTable) -> Self {
        let diff: Vec<Entry> = have
            .keys()
            .filter(|k| !want.contains_key(k))
            .map(|k| (*k, None))
            .chain(
                want.iter()
                    .filter(|(k, v)| have.get(k) != Some(v))
                    .map(|(k, v)| (*k, Some(v.clone()))),
            )
            .collect();
        Isolate {
            applied: have,
            pending: if diff.is_empty() {
                Vec::new()
            } else {
                vec![diff]
            },
            refused: Vec::new(),
            taken: 0,
        }
    }

    /// How many differences the kernel has taken so far.
    pub fn taken(&self) -> usize {
        self.taken
    }

    /// The kernel's table before the next attempt and the table to try
    /// (the next chunk over it); `None` when the search is done.
    pub fn attempt(&self) -> Option<(&ProxyTable, ProxyTable)> {
        let chunk = self.pending.last()?;
        let mut next = self.applied.clone();
        for (k, v) in chunk {
            match v {
                Some(v) => next.insert(*k, v.clone()),
                None => next.remove(k),
            };
        }
        Some((&self.applied, next))
    }

    /// The outcome of the last [`attempt`](Self::attempt): taken (the
    /// kernel now holds it) or refused (the kernel holds what it held).
    pub fn outcome(&mut self, taken: bool) {
        let Some(chunk) = self.pending.pop() else {
            return;
        };
        if taken {
            self.taken += chunk.len();
            for (k, v) in chunk {
                match v {
                    Some(v) => self.applied.insert(k, v),
                    None => self.applied.remove(&k),
                };
            }
        } else if chunk.len() == 1 {
            self.refused.extend(chunk);
        } else {
            let mut first = chunk;
            let second = first.split_off(first.len() / 2);
            // Tried in key order: the first half is popped first.
            self.pending.push(second);
            self.pending.push(first);
        }
    }

    /// What the kernel holds once the search is done, and the wanted
    /// entries it refused (a refused delete shows as the kept entry).
    pub fn finish(self) -> (ProxyTable, ProxyTable) {
        let refused = self
            .refused
            .into_iter()
            .map(|(k, v)| {
                let held = self.applied.get(&k).cloned();
                (k, v.or(held).unwrap_or_default())
            })
            .collect();
        (self.applied, refused)
    }
}

/// The entries the kernel refused, kept between syncs so a refused entry
/// is not retried on every change (each retry is a failed transaction and
/// a search): only when its wanted value changes, or at a resync.
#[derive(Debug, Clone, Default)]
pub struct Refused {
    entries: ProxyTable,
}

impl Refused {
    /// Remembers what a search found refused.
    pub fn record(&mut self, refused: ProxyTable) {
        self.entries.extend(refused);
    }

    /// Forgets everything: the next sync tries every entry again.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// How many entries are refused now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is refused.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The refused keys.
    pub fn keys(&self) -> impl Iterator<Item = &VirtualKey> {
        self.entries.keys()
    }

    /// `want` with each entry still refused as it was (same wanted value)
    /// replaced by what the kernel holds for it (`have`), so it is not
    /// tried again; entries whose wanted value changed are tried again.
    pub fn hold_back(&mut self, want: &ProxyTable, have: Option<&ProxyTable>) -> ProxyTable {
        self.entries.retain(|k, v| want.get(k) == Some(v));
        let mut out = want.clone();
        for k in self.entries.keys() {
            match have.and_then(|h| h.get(k)) {
                Some(held) => out.insert(*k, held.clone()),
                None => out.remove(k),
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use signpost_model::cluster::Protocol;

    use super::*;

    fn key(i: u8) -> VirtualKey {
        VirtualKey {
            ip: IpAddr::from([10, 96, 0, i]),
            protocol: if i == 7 {
                Protocol::Sctp
            } else {
                Protocol::Tcp
            },
            port: 80,
        }
    }

    fn vs(b: u8) -> VirtualService {
        VirtualService {
            backends: [SocketAddr::from(([10, 244, 0, b], 8080))].into(),
            affinity_timeout: None,
        }
    }

    /// A kernel that refuses every transaction writing an SCTP entry.
    fn search(have: ProxyTable, want: &ProxyTable) -> (ProxyTable, ProxyTable, usize) {
        let mut s = Isolate::new(have, want);
        let mut tries = 0;
        while let Some((from, next)) = s.attempt() {
            tries += 1;
            let writes_sctp = from
                .keys()
                .chain(next.keys())
                .any(|k| k.protocol == Protocol::Sctp && from.get(k) != next.get(k));
            s.outcome(!writes_sctp);
        }
        let (applied, refused) = s.finish();
        (applied, refused, tries)
    }

    #[test]
    fn one_refused_service_leaves_the_rest_programmed() {
        let want: ProxyTable = (0..64).map(|i| (key(i), vs(i))).collect();
        let (applied, refused, tries) = search(ProxyTable::new(), &want);
        assert_eq!(refused.keys().copied().collect::<Vec<_>>(), [key(7)]);
        assert_eq!(Isolate::new(ProxyTable::new(), &want).taken(), 0);
        assert_eq!(applied.len(), 63);
        assert!(!applied.contains_key(&key(7)));
        // One refusal among 64: the halves down to it, about 2·log₂(64).
        assert!(tries <= 13, "{tries} transactions");
    }

    #[test]
    fn deletes_and_changes_are_searched_too() {
        let have: ProxyTable = (0..8).map(|i| (key(i), vs(i))).collect();
        let want: ProxyTable = (4..12).map(|i| (key(i), vs(i + 100))).collect();
        let (applied, refused, _) = search(have.clone(), &want);
        // Key 7 (SCTP) cannot be rewritten: the kernel keeps its old entry,
        // and it is reported with the wanted value.
        assert_eq!(refused, [(key(7), vs(107))].into());
        assert_eq!(applied.get(&key(7)), have.get(&key(7)));
        // Every other change and delete went through.
        let mut expect = want.clone();
        expect.insert(key(7), vs(7));
        assert_eq!(applied, expect);
    }

    #[test]
    fn nothing_to_do_tries_nothing() {
        let t: ProxyTable = (0..4).map(|i| (key(i), vs(i))).collect();
        let (applied, refused, tries) = search(t.clone(), &t);
        assert_eq!((applied, refused.len(), tries), (t, 0, 0));
    }

    #[test]
    fn a_refused_entry_is_held_back_until_it_changes() {
        let mut r = Refused::default();
        let want: ProxyTable = [(key(1), vs(1)), (key(7), vs(7))].into();
        let have: ProxyTable = [(key(1), vs(1))].into();
        r.record([(key(7), vs(7))].into());
        assert_eq!(r.hold_back(&want, Some(&have)), have);
        // Its wanted value changed: tried again.
        let changed: ProxyTable = [(key(1), vs(1)), (key(7), vs(8))].into();
        assert_eq!(r.hold_back(&changed, Some(&have)), changed);
        assert!(r.is_empty());
    }
}
