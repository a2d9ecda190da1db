//! The nftables loop: the oracle's table for this node as one
//! transaction per sync over what the kernel holds (read back at start
//! and at every resync, PXY-8), and the search for the virtual services
//! the kernel refuses.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use signpost_model::cluster::{ProxyTable, VirtualKey};
use signpost_model::mutant::Seam;
use tracing::{info, warn};

use super::{
    Action, Config, Desired, Error, LastGood, LoopState, Touched, batch_after, desired_whole,
    next_event, report_refused, settle, this_node, watches,
};
use crate::addresses::Masquerade;
use crate::isolate::{Isolate, Refused};
use crate::metrics::Metrics;
use crate::plane::nftables::census::{self, Census};
use crate::plane::nftables::{apply, build, readback};

/// What one nftables sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// Nothing differed.
    Nothing,
    /// The whole table was written (this many virtual services).
    Full(usize),
    /// Only these many virtual services were rewritten.
    Partial(usize),
}

/// What the kernel holds as far as the loop knows: its table and, once
/// computed, the table's [`Census`] (so a change of known keys is planned
/// from those entries alone).
#[derive(Debug, Default)]
pub struct Held {
    /// The kernel's table (`None`: unknown; the next sync is full).
    pub table: Option<ProxyTable>,
    census: Option<Census>,
}

impl Held {
    /// What the kernel holds is `table` (read back, or unknown). Its census
    /// is taken now, with the table: the next partial sync then costs what
    /// its changes hold. (Taken by that sync instead, it made the first
    /// endpoint change after a full sync cost a pass over the whole table:
    /// 0.5 ms at 1k Services, 10.1 ms at 10k in `signpost-bench proxy-nft`.)
    pub fn set(&mut self, table: Option<ProxyTable>) {
        self.census = table.as_ref().map(Census::of);
        self.table = table;
    }
}

/// Applies `want` over what the kernel holds (`have`): a partial sync, or a
/// full one when there is no table yet or a partial sync was refused. With
/// `keys`, only entries under them may differ between the two, and the
/// sync costs what they hold (else both tables are compared whole).
/// Counters move after the duration is recorded, so a reader that sees a
/// new count also sees that sync's duration.
pub fn sync(
    have: &mut Held,
    want: &ProxyTable,
    keys: Option<&BTreeSet<VirtualKey>>,
    node_ips: &[IpAddr],
    masq: &Masquerade,
    metrics: &Metrics,
) -> Result<Synced, apply::Error> {
    let started = Instant::now();
    let full = |metrics: &Metrics| -> Result<Synced, apply::Error> {
        apply::apply(&build::full(want, node_ips, masq))
            .map(|()| Synced::Full(want.len()))
            .inspect_err(|_| {
                metrics.errors.inc();
            })
    };
    // The entries that differ (found once), for the plan, the census, the
    // log and the stale flows.
    let changes: Vec<census::Change<'_>> = match (have.table.as_ref(), keys) {
        (None, _) => Vec::new(),
        (Some(old), Some(keys)) => census::changes_among(old, want, keys),
        (Some(old), None) => build::changes(old, want),
    };
    let changed: Vec<VirtualKey> = changes.iter().map(|(k, _, _)| **k).collect();
    let result = match have.table.as_ref() {
        None => full(metrics),
        Some(_) if changes.is_empty() => Ok(Synced::Nothing),
        Some(old) => {
            let census = have.census.get_or_insert_with(|| Census::of(old));
            match build::partial_of(old, want, &changes, census, node_ips) {
                None => Ok(Synced::Nothing),
                Some(tx) => {
                    if changed.len() <= 3 {
                        info!(keys = ?changed, "partial sync");
                    } else {
                        tracing::debug!(changed = changed.len(), "partial sync");
                    }
                    match apply::apply(&tx) {
                        Ok(()) => Ok(Synced::Partial(changed.len())),
                        Err(e) => {
                            metrics.errors.inc();
                            warn!(error = %e, "partial sync refused; doing a full sync");
                            full(metrics)
                        }
                    }
                }
            }
        }
    };
    match result {
        Ok(done) => {
            if done != Synced::Nothing
                && let Some(old) = have.table.as_ref()
            {
                // Only the changed entries can have stale flows: the plan
                // over them alone is the plan's part for them.
                let only = |t: &ProxyTable| -> ProxyTable {
                    changed
                        .iter()
                        .filter_map(|k| t.get_key_value(k))
                        .map(|(k, v)| (*k, v.clone()))
                        .collect()
                };
                let (was, is) = (only(old), only(want));
                crate::conntrack::forget_stale(
                    &signpost_model::reconcile::plan(&is, &was),
                    &was,
                    metrics,
                );
            }
            if let (Synced::Partial(_), Some(census)) = (done, have.census.as_mut()) {
                census.update(&changes);
            }
            drop(changes);
            match (done, have.table.as_mut()) {
                // The kernel took the changed entries: so does the copy.
                (Synced::Partial(_), Some(old)) => {
                    for k in &changed {
                        match want.get(k) {
                            Some(vs) => old.insert(*k, vs.clone()),
                            None => old.remove(k),
                        };
                    }
                }
                (Synced::Full(_), _) => have.set(Some(want.clone())),
                _ => {}
            }
            if done != Synced::Nothing {
                metrics.observe_sync(started.elapsed());
            }
            match done {
                Synced::Full(_) => {
                    metrics.full_syncs.inc();
                }
                Synced::Partial(changed) => {
                    metrics
                        .services_rewritten
                        .inc_by(u64::try_from(changed).unwrap_or(0));
                    metrics.partial_syncs.inc();
                }
                Synced::Nothing => {}
            }
            Ok(done)
        }
        Err(e) => {
            have.set(None);
            Err(e)
        }
    }
}

/// What the kernel holds, and which of its virtual addresses it holds as
/// the node's (see [`build::node_port_ips`]); or `None` (a full sync
/// follows) when there is no table, it cannot be read, or its masquerade
/// policy is not `masq`.
fn read_back(metrics: &Metrics, masq: &Masquerade) -> Option<(ProxyTable, BTreeSet<IpAddr>)> {
    match apply::list() {
        Ok(Some(listing)) => {
            let want = [masq.exempt(false), masq.exempt(true)];
            if readback::no_masquerade(Some(&listing)).as_ref() != Some(&want) {
                info!(
                    "the table in the kernel has another masquerade policy; the next sync rewrites it whole"
                );
                return None;
            }
            if !readback::current_layout(&listing) {
                info!(
                    "the table in the kernel was laid out by an older release; the next sync rewrites it whole"
                );
                return None;
            }
            let table = readback::table(Some(&listing));
            let node_port_ips = readback::node_port_ips(Some(&listing), &table);
            Some((table, node_port_ips))
        }
        Ok(None) => None,
        Err(e) => {
            metrics.errors.inc();
            warn!(error = %e, "reading the table back failed; the next sync rewrites it whole");
            None
        }
    }
}

/// Runs the proxy until its watches end. A failed sync is logged, counted
/// and retried with backoff from what the kernel holds; it never ends the
/// process (a node whose proxy exits programs nothing at all).
pub async fn run(client: Client, cfg: Config, metrics: Arc<Metrics>) -> Result<(), Error> {
    let (services, slices, nodes, streams) = watches(&client, &cfg, &metrics);
    let mut events = futures::stream::select_all(streams);
    // PROTO-3, PXY-8: adopt what the kernel holds instead of flushing it.
    let (adopted, mut node_port_ips) =
        signpost_runtime::blocking(|| read_back(&metrics, &cfg.masquerade)).unzip();
    info!(node = %cfg.node_name, adopted = adopted.as_ref().map_or(0, |t| t.len()), "signpost proxy (nftables) starting");
    let mut have = Held::default();
    have.set(adopted);
    let mut state = LoopState::default();
    let mut retry_in: Option<Duration> = None;
    let mut seam = Seam::with(cfg.mutant);
    let mut last_good = LastGood::default();
    let mut desired = Desired::default();
    let mut refused = Refused::default();
    while let Some(first) = next_event(&mut events, retry_in).await {
        let batch = batch_after(first, &mut events);
        let began = Instant::now();
        cfg.health.queued(began);
        let Action::Sync { read_back: repair } = state.step(&batch) else {
            continue;
        };
        if repair {
            // Repair drift: plan against what the kernel really holds, and
            // try refused entries again.
            let (t, ips) =
                signpost_runtime::blocking(|| read_back(&metrics, &cfg.masquerade)).unzip();
            have.set(t);
            node_port_ips = ips;
            refused.clear();
        }
        let node = this_node(&nodes, &cfg.node_name, &cfg.node_port_addresses);
        // The table is kept between batches and only what a batch names
        // is recomputed (a repair recomputes it whole); a mutant's faults
        // apply to whole tables, so with one it is computed whole each time.
        let (whole, touched) = if cfg.mutant.is_some() {
            let t = desired_whole(
                (&services, &slices),
                &node,
                &metrics,
                &mut seam,
                &mut last_good,
            );
            (Some(t), Touched::All)
        } else {
            let touched = desired.update(
                (&services, &slices),
                &batch,
                &node,
                repair,
                &metrics.invalid_objects,
            );
            (None, touched)
        };
        let computed = whole.as_ref().unwrap_or(desired.table());
        if let Some(t) = &have.table
            && node_port_ips.as_ref() != Some(&build::node_port_ips(t, &node.addresses))
        {
            // The node's addresses (or --nodeport-addresses) changed since
            // the table was written: its ClusterIP sets are split otherwise.
            info!(addresses = ?node.addresses, "the node's NodePort addresses changed; rewriting the table whole");
            have.set(None);
        }
        let held_back;
        let (want, keys) = if refused.is_empty() {
            let keys = match &touched {
                Touched::Keys(k) => Some(k),
                Touched::All => None,
            };
            (computed, keys)
        } else {
            held_back = refused.hold_back(computed, have.table.as_ref());
            (&held_back, None)
        };
        // `nft` runs as a process: the runtime's other tasks (probes,
        // metrics, watches) go on while it works.
        let outcome = signpost_runtime::blocking(|| {
            match sync(
                &mut have,
                want,
                keys,
                &node.addresses,
                &cfg.masquerade,
                &metrics,
            ) {
                Ok(_) => Ok(()),
                // The whole table was refused: find the entries the kernel
                // refuses and program every other one.
                Err(e) => {
                    warn!(error = %e, "the kernel refused the table; finding the virtual services it refuses");
                    isolate_nft(&mut have, want, &node.addresses, &cfg.masquerade, &metrics).map(
                        |found| {
                            report_refused(&found);
                            refused.record(found);
                        },
                    )
                }
            }
        });
        node_port_ips = have
            .table
            .as_ref()
            .map(|t| build::node_port_ips(t, &node.addresses));
        retry_in = settle(
            outcome, &refused, &mut state, &cfg, began, retry_in, &metrics,
        );
    }
    Ok(())
}

/// After the kernel refused a whole table: programs `want` entry group by
/// entry group over what the kernel holds, halving refused groups down to
/// the single virtual services it refuses ([`Isolate`]). `have` ends as the
/// kernel's table; returns the refused entries. An error only when not
/// even an empty table can be written (no `nft`, no nf_tables).
fn isolate_nft(
    have: &mut Held,
    want: &ProxyTable,
    node_ips: &[IpAddr],
    masq: &Masquerade,
    metrics: &Metrics,
) -> Result<ProxyTable, apply::Error> {
    let base = match read_back(metrics, masq) {
        // Partial steps over it split the ClusterIP sets as it does.
        Some((t, written)) if written == build::node_port_ips(&t, node_ips) => t,
        _ => {
            let empty = ProxyTable::new();
            apply::apply(&build::full(&empty, node_ips, masq)).inspect_err(|_| {
                metrics.errors.inc();
            })?;
            empty
        }
    };
    let mut search = Isolate::new(base, want);
    while let Some((from, next)) = search.attempt() {
        let taken = match build::partial(from, &next, node_ips) {
            None => true,
            Some(tx) => match apply::apply(&tx) {
                Ok(()) => true,
                Err(apply::Error::Rejected(_)) => {
                    metrics.errors.inc();
                    false
                }
                Err(e) => {
                    metrics.errors.inc();
                    have.set(None);
                    return Err(e);
                }
            },
        };
        search.outcome(taken);
    }
    let nothing_taken = search.taken() == 0;
    let (applied, found) = search.finish();
    if nothing_taken && !found.is_empty() {
        // Everything was refused: is it these entries, or the data plane?
        // Rewriting what the kernel already holds tells.
        apply::apply(&build::full(&applied, node_ips, masq)).inspect_err(|_| {
            metrics.errors.inc();
            have.set(None);
        })?;
    }
    have.set(Some(applied));
    metrics.full_syncs.inc();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use signpost_model::cluster::{Protocol, VirtualService};

    use super::*;

    /// The census comes with the table: a first partial sync after a full
    /// one does not count the whole table (see [`Held::set`]).
    #[test]
    fn a_table_is_counted_when_it_is_set() {
        let mut table = ProxyTable::new();
        table.insert(
            VirtualKey {
                ip: "10.96.0.1".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
            },
            VirtualService {
                backends: ["10.244.0.5:8080".parse().unwrap()].into(),
                affinity_timeout: None,
            },
        );
        let mut have = Held::default();
        have.set(Some(table.clone()));
        assert_ne!(Census::of(&table), Census::default());
        assert_eq!(have.census.as_ref(), Some(&Census::of(&table)));
        have.set(None);
        assert!(have.census.is_none());
    }
}
