//! Integration tests of signpost-model: the bounded model check, injected
//! bugs, the stale-DNS hazard, oracle properties and spec traceability.

mod hazards;
mod model_check;
mod oracle_props;
mod traceability;
