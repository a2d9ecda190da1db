//! The IPVS loop: the same caches and oracle table as the nftables loop,
//! applied as the model's `plan` ops against the table IPVS holds, with
//! draining destinations and the search for refused virtual services.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Client;
use signpost_model::cluster::ProxyTable;
use signpost_model::mutant::Seam;
use tracing::{info, warn};

use super::{
    Action, Config, Error, Event, LastGood, LoopState, batch_after, next_event, node_and_table,
    report_refused, settle, watches,
};
use crate::isolate::{Isolate, Refused};
use crate::metrics::Metrics;

/// Runs the IPVS proxy until its watches end: the same caches and oracle
/// table as the nftables mode, applied as the model's `plan` ops against
/// the table read back from the kernel at start (and at every resync).
pub async fn run_ipvs(client: Client, cfg: Config, metrics: Arc<Metrics>) -> Result<(), Error> {
    use crate::plane::ipvs::{IpvsSink, sysctls};
    sysctls()?;
    let (services, slices, nodes, mut streams) = watches(&client, &cfg, &metrics);
    let drain_ticks = futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Some((Event::Drain, ()))
    })
    .boxed();
    streams.push(drain_ticks);
    let mut events = futures::stream::select_all(streams);
    let mut state = LoopState::default();
    let mut retry_in: Option<Duration> = None;
    let mut sink: Option<IpvsSink> = None;
    let mut have: Option<ProxyTable> = None;
    let mut seam = Seam::with(cfg.mutant);
    let mut last_good = LastGood::default();
    let mut refused = Refused::default();
    info!(node = %cfg.node_name, "signpost proxy (ipvs) starting");
    while let Some(first) = next_event(&mut events, retry_in).await {
        let batch = batch_after(first, &mut events);
        let began = Instant::now();
        if batch.iter().any(|e| *e != Event::Drain) {
            cfg.health.queued(began);
        }
        let resync = match state.step(&batch) {
            Action::Wait => continue,
            Action::FinishDraining => {
                // Graceful termination: delete destinations whose connections ended.
                if let Some(k) = sink.as_mut()
                    && k.draining() > 0
                {
                    match k.finish_draining().await {
                        Ok(n) if n > 0 => info!(deleted = n, "drained destinations removed"),
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "finishing drained destinations failed"),
                    }
                }
                continue;
            }
            Action::Sync { read_back } => read_back,
        };
        let (node, want) = node_and_table(
            (&services, &slices, &nodes),
            &cfg,
            &metrics,
            &mut seam,
            &mut last_good,
        );
        if resync {
            // Refused entries are tried again at every resync.
            refused.clear();
        }
        let want = refused.hold_back(&want, have.as_ref());
        if sink.is_none() {
            sink = Some(IpvsSink::connect(node.addresses.clone(), cfg.masquerade.clone()).await?);
        }
        let Some(k) = sink.as_mut() else { continue };
        if k.set_node_ips(&node.addresses) {
            info!(addresses = ?node.addresses, "the node's addresses changed");
        }
        let started = Instant::now();
        let outcome = match sync_ipvs(k, &mut have, &want, resync, &metrics).await {
            Ok(ops) => {
                if !ops.is_empty() {
                    metrics.observe_sync(started.elapsed());
                }
                Ok(())
            }
            Err(e) => {
                metrics.errors.inc();
                warn!(error = %e, "the kernel refused an ipvs sync; finding the virtual services it refuses");
                have = None;
                isolate_ipvs(k, &want, &metrics).await.map(|found| {
                    report_refused(&found);
                    refused.record(found);
                })
            }
        };
        if outcome.is_err() {
            metrics.errors.inc();
            have = None;
        }
        retry_in = settle(
            outcome, &refused, &mut state, &cfg, began, retry_in, &metrics,
        );
    }
    Ok(())
}

/// The IPVS form of [`isolate_nft`]: the model's ops for each group of
/// entries over what the kernel holds. IPVS ops are not one transaction,
/// so a refused group may leave part of itself behind: the next sync
/// reads the kernel back (`have` is left unknown).
async fn isolate_ipvs(
    k: &mut crate::plane::ipvs::IpvsSink,
    want: &ProxyTable,
    metrics: &Metrics,
) -> Result<ProxyTable, crate::plane::ipvs::Error> {
    let base = k.observed().await?;
    let mut search = Isolate::new(base, want);
    let mut last_error = None;
    while let Some((from, next)) = search.attempt() {
        let ops = signpost_model::reconcile::plan(&next, from);
        let taken = match k.apply(&ops, &next).await {
            Ok(_) => true,
            Err(e) => {
                metrics.errors.inc();
                tracing::debug!(error = %e, "a group of virtual services was refused");
                last_error = Some(e);
                false
            }
        };
        search.outcome(taken);
    }
    let nothing_taken = search.taken() == 0;
    let found = search.finish().1;
    // Several entries and not one taken: the data plane refuses writes, not
    // these entries (a failed sync: retried, and /healthz says so).
    match last_error {
        Some(e) if nothing_taken && found.len() > 1 => Err(e),
        _ => Ok(found),
    }
}

/// One IPVS sync: plan `want` against `have` (read back from the kernel
/// first when asked, or when nothing is known), apply the ops, forget the
/// UDP flows they cut (PXY-11). Returns the ops applied.
async fn sync_ipvs(
    k: &mut crate::plane::ipvs::IpvsSink,
    have: &mut Option<ProxyTable>,
    want: &ProxyTable,
    read_back: bool,
    metrics: &Metrics,
) -> Result<Vec<signpost_model::reconcile::ProxyOp>, crate::plane::ipvs::Error> {
    use signpost_model::reconcile::plan;
    if read_back || have.is_none() {
        // PROTO-3, PXY-8: plan against what the kernel really holds.
        *have = Some(k.observed().await?);
    }
    let old = have.take().unwrap_or_default();
    let ops = plan(want, &old);
    if ops.is_empty() && !read_back {
        *have = Some(old);
        return Ok(ops);
    }
    // (After a read-back an empty plan still applies: it unbinds addresses
    // no virtual service uses and rebuilds the nft sets if they were lost.)
    let applied = k.apply(&ops, want).await?;
    metrics.partial_syncs.inc();
    for (counter, n) in metrics.ops.iter().zip(applied.ops) {
        counter.inc_by(n);
    }
    if ops.len() <= 3 {
        info!(?ops, "ipvs sync");
    }
    signpost_runtime::blocking(|| crate::conntrack::forget_stale(&ops, &old, metrics));
    *have = Some(want.clone());
    Ok(ops)
}
