use clap::Parser;
use coderun_shared::{config::Settings, telemetry};
use coderun_worker::Context;
use coderun_worker::cli::{self, Cli, Command};

/// glibc's allocator, bounded: two arenas (not eight per core, each holding freed memory of its
/// own) and a fixed mmap threshold (so large blocks go back to the system when freed, and the
/// threshold does not climb). See docs/decisions.md, "The fleet's memory and the first line".
const TUNABLES: &str = "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=1048576:glibc.malloc.trim_threshold=1048576";

fn main() -> anyhow::Result<()> {
    bound_the_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

/// glibc reads its tunables once, before `main`: the worker starts itself again (same pid,
/// same arguments) with [`TUNABLES`] set, so no deployment can forget them. A `GLIBC_TUNABLES`
/// of the operator's own is kept as it is.
fn bound_the_allocator() {
    use std::os::unix::process::CommandExt;
    if !cfg!(all(target_os = "linux", target_env = "gnu"))
        || std::env::var_os("GLIBC_TUNABLES").is_some()
    {
        return;
    }
    let mut args = std::env::args_os();
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(args.next().unwrap_or_default())
        .args(args)
        .env("GLIBC_TUNABLES", TUNABLES)
        .exec();
    eprintln!("coderun-worker: cannot bound the allocator ({error}); going on without");
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load()?;
    match cli.command.unwrap_or(Command::Run) {
        Command::PrintJob { run_id } => {
            print!("{}", cli::print_job(&settings, run_id).await?);
            Ok(())
        }
        Command::Run => {
            telemetry::init(&settings.log);
            let ctx = Context::build(settings).await?;
            coderun_worker::run(ctx, shutdown_signal()).await
        }
    }
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
