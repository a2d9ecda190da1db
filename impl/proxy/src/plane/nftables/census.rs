//! What a partial sync needs to know about a whole table, kept as counts
//! so a change is planned from the entries it touches alone: which group
//! maps are in use (entries per [`Group`]) and which addresses are
//! backends (occurrences per address, for the hairpin sets). Whether an
//! address is a virtual address needs no count: keys sort by address
//! ([`has_address`](crate::plane::has_address) is one range lookup).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use signpost_model::cluster::{ProxyTable, VirtualKey, VirtualService};

use super::build::Group;

/// One entry that differs between two tables: its key and its entry in
/// each (`None` where absent).
pub type Change<'a> = (
    &'a VirtualKey,
    Option<&'a VirtualService>,
    Option<&'a VirtualService>,
);

/// The counts of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    groups: BTreeMap<Group, usize>,
    backends: HashMap<IpAddr, usize>,
}

/// The group an entry's backends are in, if it is in one (backends and no
/// affinity).
fn group_of(key: &VirtualKey, vs: &VirtualService) -> Option<Group> {
    (vs.affinity_timeout.is_none() && !vs.rejects()).then(|| Group::of(key, vs))
}

/// Moves a count up or down; whether it reached zero.
fn step(count: &mut usize, up: bool) -> bool {
    if up {
        *count += 1;
    } else {
        *count = count.saturating_sub(1);
    }
    *count == 0
}

impl Census {
    /// The counts of `table` (one pass).
    pub fn of(table: &ProxyTable) -> Census {
        let mut c = Census::default();
        for (k, vs) in table {
            c.count(k, vs, true);
        }
        c
    }

    fn count(&mut self, key: &VirtualKey, vs: &VirtualService, up: bool) {
        if let Some(g) = group_of(key, vs) {
            let n = self.groups.entry(g).or_default();
            if step(n, up) {
                self.groups.remove(&g);
            }
        }
        for b in &vs.backends {
            let n = self.backends.entry(b.ip()).or_default();
            if step(n, up) {
                self.backends.remove(&b.ip());
            }
        }
    }

    /// The counts after `changes` (entries of the old table out, of the
    /// new one in).
    pub fn update(&mut self, changes: &[Change<'_>]) {
        for (k, was, is) in changes {
            if let Some(vs) = was {
                self.count(k, vs, false);
            }
            if let Some(vs) = is {
                self.count(k, vs, true);
            }
        }
    }

    /// The groups in use.
    pub fn groups(&self) -> BTreeSet<Group> {
        self.groups.keys().copied().collect()
    }

    /// The groups in use after `changes` (the counts unchanged).
    pub fn groups_after(&self, changes: &[Change<'_>]) -> BTreeSet<Group> {
        let mut groups = self.groups.clone();
        for (k, was, is) in changes {
            for (vs, up) in [(was, false), (is, true)] {
                if let Some(g) = vs.and_then(|vs| group_of(k, vs)) {
                    let n = groups.entry(g).or_default();
                    if step(n, up) {
                        groups.remove(&g);
                    }
                }
            }
        }
        groups.into_keys().collect()
    }

    /// Which of `candidates` are backend addresses.
    pub fn backends_among(&self, candidates: &BTreeSet<IpAddr>) -> BTreeSet<IpAddr> {
        candidates
            .iter()
            .filter(|ip| self.backends.contains_key(ip))
            .copied()
            .collect()
    }

    /// Which of `candidates` are backend addresses after `changes` (the
    /// counts unchanged).
    pub fn backends_after_among(
        &self,
        changes: &[Change<'_>],
        candidates: &BTreeSet<IpAddr>,
    ) -> BTreeSet<IpAddr> {
        let mut counts: BTreeMap<IpAddr, isize> = candidates
            .iter()
            .map(|ip| {
                let n = self.backends.get(ip).copied().unwrap_or(0);
                (*ip, isize::try_from(n).unwrap_or(isize::MAX))
            })
            .collect();
        for (_, was, is) in changes {
            for (vs, d) in [(was, -1), (is, 1)] {
                for b in vs.iter().flat_map(|vs| &vs.backends) {
                    if let Some(n) = counts.get_mut(&b.ip()) {
                        *n += d;
                    }
                }
            }
        }
        counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(ip, _)| ip)
            .collect()
    }
}

/// The entries that differ among `keys` (each looked up: O(k log n)).
pub fn changes_among<'a>(
    old: &'a ProxyTable,
    new: &'a ProxyTable,
    keys: &'a BTreeSet<VirtualKey>,
) -> Vec<Change<'a>> {
    keys.iter()
        .filter_map(|k| {
            let (was, is) = (old.get(k), new.get(k));
            (was != is).then_some((k, was, is))
        })
        .collect()
}

/// The backend addresses of changed entries (either side).
pub fn touched_backends(changes: &[Change<'_>]) -> BTreeSet<IpAddr> {
    changes
        .iter()
        .flat_map(|(_, was, is)| was.iter().chain(is.iter()))
        .flat_map(|vs| vs.backends.iter().map(SocketAddr::ip))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use signpost_model::cluster::Protocol;

    fn vs(backends: &[&str]) -> VirtualService {
        VirtualService {
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            ..VirtualService::default()
        }
    }

    fn key(ip: &str) -> VirtualKey {
        VirtualKey {
            ip: ip.parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        }
    }

    #[test]
    fn updated_counts_equal_the_counts_of_the_new_table() {
        let mut old = ProxyTable::new();
        old.insert(key("10.96.0.1"), vs(&["10.1.0.1:80", "10.1.0.2:80"]));
        old.insert(key("10.96.0.2"), vs(&["10.1.0.1:80"]));
        old.insert(key("10.96.0.3"), vs(&[]));
        let mut new = old.clone();
        new.insert(key("10.96.0.1"), vs(&["10.1.0.3:80"]));
        new.remove(&key("10.96.0.2"));
        new.insert(
            key("10.96.0.4"),
            vs(&["10.1.0.2:80", "10.1.0.4:80", "10.1.0.5:80"]),
        );
        let keys: BTreeSet<VirtualKey> = old.keys().chain(new.keys()).copied().collect();
        let changed = changes_among(&old, &new, &keys);
        assert_eq!(changed.len(), 3, "10.96.0.3 did not change");
        let mut census = Census::of(&old);
        let candidates = touched_backends(&changed);
        let (groups, backends) = (
            census.groups_after(&changed),
            census.backends_after_among(&changed, &candidates),
        );
        census.update(&changed);
        assert_eq!(census, Census::of(&new));
        assert_eq!(groups, census.groups());
        assert_eq!(backends, census.backends_among(&candidates));
        assert_eq!(
            census.backends_among(&candidates),
            ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect()
        );
        assert_eq!(census.groups().len(), 2, "groups of 1 and 3 backends");
    }

    #[test]
    fn a_plan_from_the_changed_keys_equals_the_plan_from_both_whole_tables() {
        use super::super::build::{partial, partial_keys};
        // Tables of 40 addresses; each step changes a few of them: a
        // backend more or less (group moves), all gone (reject), affinity,
        // an address added or removed; a backend shared across addresses.
        let mut t = ProxyTable::new();
        for i in 0..40u8 {
            let b = format!("10.1.0.{}:80", i % 7);
            t.insert(key(&format!("10.96.0.{i}")), vs(&[&b, "10.1.1.1:80"]));
        }
        let mut census = Census::of(&t);
        for step in 0..60u16 {
            let mut next = t.clone();
            let mut keys = BTreeSet::new();
            for j in 0..3u16 {
                let k = key(&format!("10.96.0.{}", (step * 7 + j * 13) % 45));
                keys.insert(k);
                match (step + j) % 5 {
                    0 => {
                        next.remove(&k);
                    }
                    1 => {
                        next.insert(k, vs(&[]));
                    }
                    2 => {
                        let mut v = vs(&["10.1.1.1:80"]);
                        v.affinity_timeout = Some(30);
                        next.insert(k, v);
                    }
                    n => {
                        let b = format!("10.1.2.{}:80", step % 11);
                        next.insert(
                            k,
                            vs(&[&b, "10.1.0.3:80", "10.1.1.1:80"][..usize::from(n - 2)]),
                        );
                    }
                }
            }
            let whole = partial(&t, &next, &[]);
            let keyed = partial_keys(&t, &next, &keys, &census, &[]);
            assert_eq!(keyed, whole, "step {step}");
            census.update(&changes_among(&t, &next, &keys));
            assert_eq!(census, Census::of(&next), "step {step}");
            t = next;
        }
    }
}
