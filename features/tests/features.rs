//! Runs every feature in `features/` against the world chosen by
//! `SIGNPOST_WORLD` (default: the model). Fails on failed or skipped steps.

use cucumber::World;
use signpost_features::SignpostWorld;

fn main() {
    let dir = env!("CARGO_MANIFEST_DIR");
    futures::executor::block_on(
        SignpostWorld::cucumber()
            .fail_on_skipped()
            .run_and_exit(dir),
    );
}
