//! Running the server: load the prompts, bind, serve, and stop gracefully.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use std::sync::Arc;

use crate::config::Config;
use crate::fewshot::{self, ModelSlot};
use crate::prompts::watch::WatchGuard;
use crate::{AppState, admin_app, health_app, prompts};

/// A server running in the background.
pub struct Server {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    health_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
    state: AppState,
    _watch: Option<WatchGuard>,
    _git_poll: Option<AbortOnDrop>,
}

/// Stops a background task when the server goes.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Server {
    /// Loads the prompts (refusing to start if any problem is found), binds `config.listen`
    /// (port 0 picks a free port) and starts serving.
    pub async fn start(mut config: Config) -> anyhow::Result<Server> {
        // Git write mode serves the branch's tip, checked out under the state folder.
        let git = match config.git.clone() {
            Some(git) => {
                let store = crate::admin::git::GitStore::open(git, &config.state_dir)
                    .await
                    .context("git write mode (--git-remote)")?;
                config.prompts_dir = store.prompts_dir();
                tracing::info!(
                    remote = %store.remote_shown(),
                    branch = %store.config().branch,
                    commit = %store.served_commit(),
                    review = ?store.config().review_prefix,
                    "writing through git"
                );
                Some(Arc::new(store))
            }
            None => None,
        };
        let model = Arc::new(ModelSlot::new(
            config.embedding_model.clone(),
            config.onnxruntime.clone(),
            Some(config.state_dir.clone()),
        ));
        // Loading compiles every template and may embed examples: off the reactor.
        let dir = config.prompts_dir.clone();
        let slot = model.clone();
        let (set, degraded) = tokio::task::spawn_blocking(move || {
            let mut set = prompts::load(&dir)?;
            let degraded = fewshot::attach_vectors(&mut set, &slot);
            Ok::<_, prompts::Problems>((set, degraded))
        })
        .await?
        .map_err(|problems| {
            anyhow::anyhow!(
                "the prompts in `{}` are not valid ({} problem{}):\n{problems}",
                config.prompts_dir.display(),
                problems.0.len(),
                if problems.0.len() == 1 { "" } else { "s" }
            )
        })?;
        for problem in &degraded {
            tracing::error!("{problem}");
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(
            %addr,
            prompts = set.len(),
            upstream = %config.upstream,
            "listening"
        );
        let admin_listener = match config.admin_listen {
            Some(admin) => Some(
                TcpListener::bind(admin)
                    .await
                    .with_context(|| format!("cannot listen on {admin} (--admin-listen)"))?,
            ),
            None => None,
        };
        let health_listener = match config.health_listen {
            Some(health) => Some(
                TcpListener::bind(health)
                    .await
                    .with_context(|| format!("cannot listen on {health} (--health-listen)"))?,
            ),
            None => None,
        };
        let mut state = AppState::new(config, set, model, degraded)?;
        if git.is_some() {
            state.writer = Arc::new(crate::admin::write::Writer::refusing(
                &state.config.prompts_dir,
            ));
        }
        state.git = git;
        let git_poll = state.git.clone().map(|git| {
            let reloader = state.reloader.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(git.config().poll);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await;
                loop {
                    ticker.tick().await;
                    if let Err(e) = git.sync(&reloader).await {
                        tracing::warn!("{e}");
                    }
                }
            })
        });
        let watch_guard = if state.config.watch {
            let reloader = state.reloader.clone();
            let guard = prompts::watch::watch(
                &state.config.prompts_dir,
                state.config.watch_poll,
                move || reloader.trigger(),
            )?;
            Some(guard)
        } else {
            None
        };
        let (stop, stopped) = watch::channel(false);
        let limits = state.config.limits;
        let serve = |listener: TcpListener, routes: crate::Routes| {
            tokio::spawn(crate::listener::serve(
                listener,
                routes,
                limits,
                stopped.clone(),
            ))
        };
        tokio::spawn(crate::rollout::run(state.clone(), stopped.clone()));
        let main = if state.config.console_only {
            // No proxy: the console and the admin API, with the probes.
            crate::Routes::new(
                admin_app(state.clone())
                    .merge(health_app(state.clone()).with_state::<AppState>(()))
                    .with_state(state.clone()),
            )
        } else {
            crate::Routes::proxy(state.clone())
        };
        let mut tasks = vec![serve(listener, main)];
        let mut admin_addr = None;
        if let Some(admin_listener) = admin_listener {
            admin_addr = Some(admin_listener.local_addr()?);
            tracing::info!(addr = %admin_addr.unwrap_or(addr), "admin API and metrics listening");
            let router = admin_app(state.clone()).with_state(state.clone());
            tasks.push(serve(admin_listener, crate::Routes::new(router)));
        }
        let mut health_addr = None;
        if let Some(health_listener) = health_listener {
            health_addr = Some(health_listener.local_addr()?);
            tracing::info!(addr = %health_addr.unwrap_or(addr), "health probes listening");
            tasks.push(serve(
                health_listener,
                crate::Routes::new(health_app(state.clone())),
            ));
        }
        Ok(Server {
            addr,
            admin_addr,
            health_addr,
            stop,
            tasks,
            state,
            _watch: watch_guard,
            _git_poll: git_poll.map(AbortOnDrop),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address, with `--admin-listen`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The health listener's address, with `--health-listen`.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting, lets in-flight requests and streams finish for up to `grace`.
    pub async fn shutdown(self, grace: Duration) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(self.tasks);
        match tokio::time::timeout(grace, all).await {
            Ok(joined) => {
                for task in joined {
                    task.context("server task failed")??;
                }
                // Every request has finished; write out what they recorded.
                self.state.recorder.flush().await;
                if let Some(telemetry) = &self.state.telemetry {
                    telemetry.flush(Duration::from_secs(5)).await;
                }
                tracing::info!("stopped");
            }
            Err(_) => {
                tracing::warn!(
                    grace_s = grace.as_secs_f64(),
                    "requests still in flight after the shutdown grace period; stopping anyway"
                );
                self.state.recorder.flush().await;
            }
        }
        Ok(())
    }
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let grace = config.shutdown_grace;
    // The handlers are in place before the first connection is accepted: a SIGTERM that came
    // between the listeners starting and the handlers being installed would kill the process
    // with requests in flight.
    let signal = shutdown_signal()?;
    let server = Server::start(config).await?;
    signal.await;
    tracing::info!(grace_s = grace.as_secs_f64(), "shutting down");
    server.shutdown(grace).await
}

/// Installs the SIGTERM and SIGINT handlers now; the future ends at the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = interrupt.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
