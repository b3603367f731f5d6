//! The TLS side of the uplink connection, bridged to rumqttc over a Unix socket.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;

#[derive(Debug, Default)]
struct Shared {
    /// The last TLS-side failure, for the next error rumqttc reports.
    error: Option<String>,
    /// The connection being bridged (one at a time: a new one replaces it).
    current: Option<JoinHandle<()>>,
}

#[derive(Debug)]
pub struct Bridge {
    dir: PathBuf,
    path: PathBuf,
    shared: Arc<Mutex<Shared>>,
    accept: JoinHandle<()>,
}

impl Bridge {
    /// A Unix socket in a new 0700 directory under `socket_dir` (the runtime directory),
    /// else under the temporary directory (private under systemd's PrivateTmp), and the
    /// task that accepts rumqttc on it.
    pub fn start(
        host: &str,
        port: u16,
        config: Arc<rustls::ClientConfig>,
        socket_dir: Option<&Path>,
    ) -> std::io::Result<Self> {
        let temp = std::env::temp_dir();
        let (dir, path, listener) = match socket_dir.map(listen_in) {
            Some(Ok(bound)) => bound,
            Some(Err(e)) => {
                tracing::debug!("uplink: TLS bridge socket not in the runtime directory ({e})");
                listen_in(&temp)?
            }
            None => listen_in(&temp)?,
        };
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let accept = tokio::spawn(accept_loop(
            listener,
            format!("{host}:{port}"),
            server_name,
            tokio_rustls::TlsConnector::from(config),
            Arc::clone(&shared),
        ));
        Ok(Self {
            dir,
            path,
            shared,
            accept,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn take_error(&self) -> Option<String> {
        lock(&self.shared).error.take()
    }

    /// Waits (at most `limit`) until the current connection has ended its TLS side.
    pub async fn finish(&self, limit: Duration) {
        let current = lock(&self.shared).current.take();
        if let Some(mut task) = current
            && tokio::time::timeout(limit, &mut task).await.is_err()
        {
            task.abort();
        }
    }
}

/// A new 0700 directory `edgegw-uplink-<random>` in `parent` and the socket bound in it.
fn listen_in(parent: &Path) -> std::io::Result<(PathBuf, PathBuf, UnixListener)> {
    use std::os::unix::fs::DirBuilderExt as _;
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
    let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let dir = parent.join(format!("edgegw-uplink-{name}"));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let path = dir.join("mqtt.sock");
    match UnixListener::bind(&path) {
        Ok(l) => Ok((dir, path, l)),
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            Err(e)
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.accept.abort();
        if let Some(task) = lock(&self.shared).current.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(
    listener: UnixListener,
    addr: String,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    shared: Arc<Mutex<Shared>>,
) {
    while let Ok((mqtt, _)) = listener.accept().await {
        let task = tokio::spawn(serve(
            mqtt,
            addr.clone(),
            server_name.clone(),
            tls.clone(),
            Arc::clone(&shared),
        ));
        if let Some(old) = lock(&shared).current.replace(task) {
            old.abort();
        }
    }
}

/// Connects TCP + TLS and copies both ways. When rumqttc's side ends (after DISCONNECT,
/// or on a reconnect), TLS is shut down: close_notify, then FIN.
async fn serve(
    mqtt: UnixStream,
    addr: String,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    shared: Arc<Mutex<Shared>>,
) {
    let stream = async {
        let tcp = TcpStream::connect(&addr).await?;
        tls.connect(server_name, tcp).await
    }
    .await;
    let stream = match stream {
        Ok(s) => s,
        Err(e) => {
            lock(&shared).error = Some(super::error_chain(&e));
            return;
        }
    };
    let (mut mqtt_rx, mut mqtt_tx) = tokio::io::split(mqtt);
    let (mut tls_rx, mut tls_tx) = tokio::io::split(stream);
    let up = async {
        let _ = tokio::io::copy(&mut mqtt_rx, &mut tls_tx).await;
        // close_notify, then the TCP write side.
        let _ = tls_tx.shutdown().await;
    };
    let down = async {
        // A refusal after the handshake (TLS 1.3 reports a rejected client certificate on
        // the first read) is kept before rumqttc sees its side close.
        if let Err(e) = tokio::io::copy(&mut tls_rx, &mut mqtt_tx).await {
            lock(&shared).error = Some(super::error_chain(&e));
        }
        let _ = mqtt_tx.shutdown().await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut up => {
            // The broker closes after DISCONNECT; do not wait for it long.
            let _ = tokio::time::timeout(Duration::from_secs(2), down).await;
        }
        () = &mut down => up.await,
    }
}
