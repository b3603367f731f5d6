//! `edgegw`: the composition root. Parses the command line, loads the configuration, opens the
//! stores, builds the tasks and hands them to the supervisor.

mod exit;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use gateway::auth::{self, AuthStore};
use gateway::cli::{Cli, Command};
use gateway::config::{self, Config, ConfigFileError, Profile, Source};
use gateway::runtime::notify::Notifier;
use gateway::runtime::supervisor::{Shutdown, Signal, Stage, Supervisor};
use tokio::sync::mpsc;
use tracing::{info, warn};

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => exit::report(&err),
    }
}

/// glibc gives every thread that allocates its own malloc arena (up to 8 per core), each
/// keeping freed memory resident; two arenas serve a daemon of a few threads and keep idle
/// RSS down (docs/benchmarks.md, "Footprint"). A `MALLOC_ARENA_MAX` in the environment wins
/// (then this does nothing).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable of the allocator; called before any thread
        // other than main exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run => run(&load_config(&cli)?, source(&cli)),
        Command::CheckConfig => check_config(&cli),
        Command::Client(ref cmd) => provision(&cli, |c| auth::cli::client(c, cli.json, cmd)),
        Command::Channel(ref cmd) => provision(&cli, |c| auth::cli::channel(c, cli.json, cmd)),
        Command::Connect(ref args) => {
            provision(&cli, |c| auth::cli::connect(c, cli.json, args, true))
        }
        Command::Disconnect(ref args) => {
            provision(&cli, |c| auth::cli::connect(c, cli.json, args, false))
        }
        Command::Certs(ref cmd) => provision(&cli, |c| gateway::pki::command(c, cmd, cli.json)),
        Command::Status => status(&cli),
        Command::Quarantine(ref cmd) => load_config(&cli).and_then(|c| {
            gateway::runtime::quarantine::command(&c.gateway.runtime_dir, cmd, cli.json)
                .map(|()| exit::OK)
        }),
        Command::Bootstrap => provision(&cli, |c| {
            gateway::bootstrap::command::run(c, source(&cli), cli.json)
        }),
    }
}

/// A command that writes to the state directory. Run as root, what it created there is handed
/// to the directory's owner afterwards (the service user), so the daemon can still open it.
fn provision(cli: &Cli, command: impl FnOnce(&Config) -> anyhow::Result<()>) -> anyhow::Result<u8> {
    let config = load_config(cli)?;
    let result = command(&config).map(|()| exit::OK);
    match gateway::runtime::ownership::hand_over_to_state_owner(&config.gateway.state_dir) {
        Ok(0) => {}
        Ok(n) => eprintln!(
            "note: running as root; {n} file(s) created in {} handed to its owner",
            config.gateway.state_dir.display()
        ),
        Err(e) => eprintln!(
            "warning: running as root; could not hand files in {} to its owner: {e}",
            config.gateway.state_dir.display()
        ),
    }
    result
}

fn profile(cli: &Cli) -> Profile {
    if cli.dev {
        Profile::dev_in_current_dir()
    } else {
        Profile::Production
    }
}

fn source(cli: &Cli) -> Source {
    match (&cli.config, cli.dev) {
        (Some(path), _) => Source::Explicit(path.clone()),
        (None, true) => Source::None,
        (None, false) => Source::Default(PathBuf::from(config::DEFAULT_PATH)),
    }
}

/// The configuration, with the applied bootstrap config (if any) layered under the file.
fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let source = source(cli);
    let config = config::load(&source, profile(cli))?;
    Ok(gateway::bootstrap::layered(config, &source)?)
}

fn check_config(cli: &Cli) -> anyhow::Result<u8> {
    let config = load_config(cli)?;
    match &config.source {
        Some(path) => println!(
            "# effective configuration: {} + EDGEGW_* environment (secrets redacted)",
            path.display()
        ),
        None => println!(
            "# effective configuration: defaults + EDGEGW_* environment (secrets redacted)"
        ),
    }
    if config.bootstrap.enabled()
        && let Some(applied) = gateway::bootstrap::read_applied(&config.gateway.state_dir)?
    {
        println!(
            "# with the bootstrap config applied {} from {} for {} (under the file)",
            gateway::pki::rfc3339(applied.applied_at),
            applied.origin,
            applied.external_id
        );
    }
    for warning in &config.warnings {
        println!("# warning: {warning}");
    }
    print!("{}", config.to_redacted_toml());
    Ok(exit::OK)
}

/// `edgegw status`: asks the running daemon over its control socket.
fn status(cli: &Cli) -> anyhow::Result<u8> {
    let config = load_config(cli)?;
    let report = gateway::runtime::control::query(&config.gateway.runtime_dir)?;
    if cli.json {
        println!("{report}");
    } else {
        print!("{}", gateway::runtime::status::render(&report));
    }
    Ok(exit::OK)
}

/// Creates the state and runtime directories (0700) if missing.
fn prepare_dirs(config: &Config) -> anyhow::Result<()> {
    for (what, dir) in [
        ("state directory", &config.gateway.state_dir),
        ("runtime directory", &config.gateway.runtime_dir),
    ] {
        let made = certs::files::ensure_private_dir(dir).map_err(|e| ConfigFileError {
            what,
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        if made.others_can_read {
            warn!(
                "{what} {} is readable by other users; it should be mode 0700",
                dir.display()
            );
        }
    }
    Ok(())
}

fn run(config: &Config, source: Source) -> anyhow::Result<u8> {
    gateway::runtime::logging::init(&config.gateway.log_level);
    info!(
        version = env!("CARGO_PKG_VERSION"),
        dev = config.profile.is_dev(),
        "edgegw starting"
    );
    for warning in &config.warnings {
        warn!("{warning}");
    }
    // One crypto provider for the whole process: aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Before anything is created: a refused start leaves no state behind.
    gateway::pki::check_expiry(config, gateway::pki::now_unix(), true)?;
    prepare_dirs(config)?;
    let auth_store = open_auth_store(config)?;
    let config = &gateway::pki::with_dev_pki(config)?;
    // Optional hardware watchdog and status LED ([board], both off by default).
    let sysroot = hal::identity::SysRoot::system();
    let board = gateway::runtime::board::start(&config.board, &sysroot)?;
    // Read once: board identity does not change while the daemon runs.
    let board_status = gateway::runtime::status::BoardStatus::read(&sysroot);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("edgegw")
        .build()
        .context("cannot start the async runtime")?;
    // A bootstrap that applied a changed config asks for an orderly stop and a start in place.
    let (signal_tx, signals) = mpsc::channel(8);
    let restart = gateway::bootstrap::task::Restart::new(signal_tx.clone());
    let outcome = runtime.block_on(async {
        // First, so a SIGTERM that arrives while listeners start is an orderly stop, not the
        // default action (killed by the signal).
        forward_signals(signal_tx).context("cannot install signal handlers")?;
        let notifier = Notifier::from_env();
        let supervisor = Supervisor::with_notifier(notifier.clone());
        // Bound before anything starts: a second daemon on the same runtime directory stops here.
        let control = gateway::runtime::control::bind(&config.gateway.runtime_dir)
            .context("cannot open the control socket")?;
        // Every network listener, bound here and handed to its adapter (serial ports are
        // opened by their tasks: a port may be plugged in after the start).
        let listeners = gateway::runtime::listeners::bind(config)?;
        // Outbox, uplink, control socket (issue 4). Adapters take `pipeline.outbox`.
        // Commands are kept for every subscribe-connected client (CoAP, serial), so that a
        // sensor that polls with GET or comes back later finds those published meanwhile.
        let recipients = auth_store.clone();
        let recipients: gateway::downlink::Recipients =
            std::sync::Arc::new(move |channel: &str| recipients.snapshot().subscribers(channel));
        let pipeline = gateway::pipeline::start(
            config,
            &supervisor,
            Some(recipients),
            control,
            board_status,
            Some(auth_store.channel_directory()),
        )?;
        pipeline.follow_subscriptions(&supervisor, auth_store.subscribed_channels());
        if let Some(heartbeat) = board.heartbeat(
            config.board.watchdog_interval.get(),
            supervisor.token(gateway::runtime::supervisor::Stage::Pipeline),
        ) {
            supervisor.spawn(gateway::runtime::supervisor::Stage::Pipeline, heartbeat);
        }
        // Serial sensors (issue 7): intake stage, one task per configured port.
        gateway::adapters::serial::start(
            &config.serial,
            gateway::adapters::serial::GatewayBackend::new(
                gateway::intake::Intake::new(
                    auth_store.clone(),
                    pipeline.outbox.clone(),
                    pipeline.downlink.clone(),
                )
                .with_gateway_domain(&config.gateway.domain_id),
            ),
            pipeline.status.serial(),
            &supervisor,
        );
        // CoAP / CoAPS adapters (issue 6) and the management API + HTTP adapter (issue 9) on
        // the listeners bound above, before "ready".
        gateway::adapters::coap::start(
            config,
            &supervisor,
            &auth_store,
            &pipeline,
            listeners.coap,
            listeners.coaps,
        )?;
        gateway::http::start(
            config,
            &supervisor,
            listeners.http,
            auth_store.clone(),
            pipeline.outbox.clone(),
            Some(pipeline.status.clone()),
        )?;
        // Bootstrap provisioning (issue 15): first start, SIGHUP, periodic re-check.
        if let Some(b) = gateway::bootstrap::Bootstrapper::new(config, source)? {
            let current = gateway::bootstrap::read_applied(&config.gateway.state_dir)?;
            let status = pipeline.status.bootstrap().clone();
            gateway::bootstrap::task::start(b, current, status, &supervisor, restart.clone());
        }
        supervisor.spawn(
            Stage::Intake,
            gateway::pki::expiry_task(
                config.clone(),
                supervisor.token(Stage::Intake),
                supervisor.reloads(),
            ),
        );
        info!(
            state_dir = %config.gateway.state_dir.display(),
            runtime_dir = %config.gateway.runtime_dir.display(),
            "ready"
        );
        if config.uplink.url.is_none() {
            info!("no uplink configured: accepted messages will wait in the outbox");
        }
        // Free heap pages from the start-up (auth snapshot rows, configs) go back to the
        // kernel now and after a load peak (runtime::memory).
        supervisor.spawn(
            Stage::Pipeline,
            gateway::runtime::memory::trim_task(supervisor.token(Stage::Pipeline)),
        );
        // READY=1 only now: stores open, serial ports started, control socket bound.
        notifier.ready(if config.uplink.url.is_none() {
            "running: no uplink, messages wait in the outbox"
        } else {
            "running"
        });
        anyhow::Ok(
            supervisor
                .run(signals, config.gateway.drain_timeout.get())
                .await,
        )
    })?;
    // Flushes queued audit events (adapters, which hold clones, have stopped).
    drop(auth_store);
    // Watchdog magic close, LED off.
    board.stop();
    match outcome {
        Shutdown::Clean | Shutdown::DrainTimeout => {
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            if restart.requested() {
                info!("restarting in place with the bootstrap config");
                return Err(restart_in_place());
            }
            Ok(exit::OK)
        }
        // Exit now, without waiting for blocking threads: everything acknowledged is durable.
        Shutdown::Forced => std::process::exit(i32::from(exit::FAILURE)),
    }
}

/// Opens `<state_dir>/auth.db` (refusing a corrupt or too-new file: exit 78) and, in the dev
/// profile, provisions the demo sensor on first start.
fn open_auth_store(config: &Config) -> anyhow::Result<AuthStore> {
    let store = AuthStore::open(&auth::path_in(&config.gateway.state_dir), &config.auth)?;
    let demo_domain = if config.gateway.domain_id.is_empty() {
        auth::DEV_DOMAIN
    } else {
        &config.gateway.domain_id
    };
    if config.profile.is_dev()
        && let Some(secret) = store.ensure_demo(demo_domain)?
    {
        // The documented exception to "secrets are never logged": dev profile, first start.
        info!(
            "dev profile: demo sensor provisioned: identity `{}`, channel `{}` in domain `{}` \
             (publish, subscribe; CoAP/HTTP path m/{}/c/{}), secret `{secret}`. Shown only now; \
             `edgegw --dev client rotate-secret {}` makes a new one",
            auth::DEMO_IDENTITY,
            auth::DEMO_CHANNEL,
            demo_domain,
            demo_domain,
            auth::DEMO_CHANNEL,
            auth::DEMO_IDENTITY
        );
    }
    let snapshot = store.snapshot();
    info!(
        path = %store.path().display(),
        clients = snapshot.clients(),
        channels = snapshot.channels(),
        connections = snapshot.connections,
        "auth store open"
    );
    Ok(store)
}

/// SIGTERM/SIGINT → Terminate, SIGHUP → Reload.
fn forward_signals(tx: mpsc::Sender<Signal>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let sig = tokio::select! {
                _ = term.recv() => Signal::Terminate,
                _ = int.recv() => Signal::Terminate,
                _ = hup.recv() => Signal::Reload,
            };
            if tx.send(sig).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Starts this binary again in place (same PID, so the service manager keeps tracking it),
/// with the same arguments and environment: after bootstrap applied a changed config, every
/// part is rebuilt from the one validated configuration. Returns only on failure.
fn restart_in_place() -> anyhow::Error {
    use std::os::unix::process::CommandExt as _;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .exec();
    anyhow::Error::new(err).context("cannot restart in place after bootstrap")
}
