//! Boots the VM rig with a script given on the command line:
//! `cargo run -p signpost-harness --example vm_smoke -- 'ipvsadm -Ln'`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let script = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ipvsadm -Ln".into());
    let image = signpost_harness::vm::image()?;
    let out = signpost_harness::vm::run(&image, &[], &script, std::time::Duration::from_secs(180))?;
    println!("{}", out.console);
    println!("exit {:?} in {:.1?}", out.code, out.elapsed);
    Ok(())
}
