//! Boots the VM rig with the IPVS test binaries and a script:
//! `cargo run -p signpost-whitebox --example vm_smoke -- '/test/signpost-vmtest genl'`.
//! Binaries come from the same target directory as this example.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let script = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ipvsadm -Ln".into());
    let dir = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .ok_or("no target dir")?
        .to_path_buf();
    let image = signpost_harness::vm::image()?;
    let files: Vec<(std::path::PathBuf, &str)> = [
        ("signpost-vmtest", "/test/signpost-vmtest"),
        ("signpost-echo", "/test/signpost-echo"),
        ("signpost", "/test/signpost"),
    ]
    .into_iter()
    .filter(|(b, _)| dir.join(b).is_file())
    .map(|(b, g)| (dir.join(b), g))
    .collect();
    let out =
        signpost_harness::vm::run(&image, &files, &script, std::time::Duration::from_secs(900))?;
    println!("{}", out.console);
    println!("exit {:?} in {:.1?}", out.code, out.elapsed);
    Ok(())
}
