//! The EndpointSlice controller's write plan (EPS-9, EPS-11): from the
//! oracle's desired endpoints and the slices that exist, the fewest writes.
//! An endpoint that stays never moves to another slice; one endpoint change
//! rewrites one slice.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::cluster::{Endpoint, EndpointSlice, ObjectKey};
use crate::spec::{MAX_ENDPOINTS_PER_SLICE, SliceShape};

/// One write to the API server.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SliceWrite {
    /// Create a slice (the API server names it with `generateName`).
    Create {
        /// Family and ports.
        shape: SliceShape,
        /// Endpoints.
        endpoints: Vec<Endpoint>,
    },
    /// Replace an existing slice (optimistic concurrency on its resourceVersion).
    Update(EndpointSlice),
    /// Delete a slice.
    Delete(ObjectKey),
}

/// Plans the writes that make `existing` (the Service's slices) hold exactly
/// `desired`. A shape desired with no endpoints (EPS-14's placeholder) is
/// one empty slice: an existing slice of that shape is kept (emptied if
/// need be), else one is created. Deterministic: existing slices are
/// visited in key order.
pub fn plan_slices(
    desired: &BTreeMap<SliceShape, BTreeSet<Endpoint>>,
    existing: &[&EndpointSlice],
) -> Vec<SliceWrite> {
    plan_slices_with(desired, existing, MAX_ENDPOINTS_PER_SLICE)
}

/// [`plan_slices`] with at most `max` endpoints in a slice
/// (kube-controller-manager's `--max-endpoints-per-slice`, 1 to 1000); a
/// slice over it, from a larger setting before, gives up its excess.
pub fn plan_slices_with(
    desired: &BTreeMap<SliceShape, BTreeSet<Endpoint>>,
    existing: &[&EndpointSlice],
    max: usize,
) -> Vec<SliceWrite> {
    let max = max.max(1);
    let mut want: BTreeMap<&SliceShape, BTreeMap<IpAddr, &Endpoint>> = desired
        .iter()
        .map(|(s, eps)| (s, eps.iter().map(|e| (e.address, e)).collect()))
        .collect();
    let mut existing: Vec<&EndpointSlice> = existing.to_vec();
    existing.sort_by(|a, b| a.key.cmp(&b.key));

    let mut writes = Vec::new();
    // Deletes go last: when a Service's ports change, the slice of the new
    // shape is written before the old one goes, so there is no moment
    // without endpoints.
    let mut deletes = Vec::new();
    // Slices kept, per shape: (new content, changed?).
    let mut kept: BTreeMap<SliceShape, Vec<(EndpointSlice, bool)>> = BTreeMap::new();
    for slice in existing {
        let shape = SliceShape {
            family: slice.family,
            ports: slice.ports.clone(),
        };
        let Some(wanted) = want.get_mut(&shape) else {
            deletes.push(SliceWrite::Delete(slice.key.clone()));
            continue;
        };
        let mut staying: Vec<&Endpoint> = slice
            .endpoints
            .iter()
            .filter_map(|ep| wanted.remove(&ep.address))
            .collect();
        for excess in staying.split_off(staying.len().min(max)) {
            wanted.insert(excess.address, excess);
        }
        let endpoints: Vec<Endpoint> = staying.into_iter().cloned().collect();
        let changed = endpoints != slice.endpoints;
        let mut next = slice.clone();
        next.endpoints = endpoints;
        kept.entry(shape).or_default().push((next, changed));
    }
    for (shape, wanted) in want {
        let mut rest: Vec<Endpoint> = wanted.into_values().cloned().collect();
        let slices = kept.entry(shape.clone()).or_default();
        for (slice, changed) in slices.iter_mut() {
            while slice.endpoints.len() < max && !rest.is_empty() {
                slice.endpoints.push(rest.remove(0));
                *changed = true;
            }
        }
        if slices.is_empty() && desired[shape].is_empty() {
            writes.push(SliceWrite::Create {
                shape: shape.clone(),
                endpoints: Vec::new(),
            });
        }
        for chunk in rest.chunks(max) {
            writes.push(SliceWrite::Create {
                shape: shape.clone(),
                endpoints: chunk.to_vec(),
            });
        }
    }
    for (shape, slices) in kept {
        // The placeholder: the first empty slice of a shape desired empty.
        let mut placeholder = desired.get(&shape).is_some_and(BTreeSet::is_empty);
        for (slice, changed) in slices {
            if slice.endpoints.is_empty() && !std::mem::take(&mut placeholder) {
                deletes.push(SliceWrite::Delete(slice.key));
            } else if changed {
                writes.push(SliceWrite::Update(slice));
            }
        }
    }
    writes.extend(deletes);
    writes
}
