//! Prints the comparison table for a generated workload:
//! `cargo run --release -p runscale-sim --example table -- workday 1 [--persistent]
//! [--no-wake-on-completion] [--charts DIR]`.
fn main() {
    let mut kind = "workday".to_owned();
    let mut seed = 1u64;
    let mut pool = runscale_sim::SimPool::default_pool();
    let mut world = runscale_sim::WorldParams::default();
    let mut charts = None;
    let mut positional = 0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--persistent" => pool.spec.ephemeral = false,
            "--no-wake-on-completion" => world.wake_on_completion = false,
            "--charts" => charts = args.next(),
            _ if positional == 0 => {
                kind = a;
                positional += 1;
            }
            _ => seed = a.parse().unwrap_or(seed),
        }
    }
    let Ok(kind) = kind.parse() else {
        eprintln!("unknown generator {kind}");
        std::process::exit(2);
    };
    let args = runscale_sim::SimulateArgs {
        trace: runscale_sim::TraceSource::Generate { kind, seed },
        pools: vec![pool],
        world,
        ..Default::default()
    };
    match runscale_sim::run(&args) {
        Ok(r) => {
            print!("{}", r.to_table());
            if let Some(dir) = charts
                && let Err(e) = runscale_sim::charts::write(&r, std::path::Path::new(&dir))
            {
                eprintln!("charts: {e}");
            }
        }
        Err(e) => eprintln!("error: {e}"),
    }
}
