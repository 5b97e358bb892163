//! The API's Unix socket, for its owner only: the socket file is created
//! with mode 0600 (bound under a temporary name, restricted, then renamed
//! into place, so that there is no moment at which anyone else may connect),
//! and each connection's peer credentials are checked as well, so that a
//! socket whose mode was widened still answers only root and the agent's
//! own user.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream, unix::SocketAddr};

/// Binds `path` (replacing a stale socket) with mode 0600.
pub fn bind_private(path: &Path) -> std::io::Result<OwnerOnly> {
    let _ = std::fs::remove_file(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{}.{}",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    listener.set_nonblocking(true)?;
    Ok(OwnerOnly(UnixListener::from_std(listener)?))
}

/// A listener that hands out only connections of root or of the agent's
/// own user; others are closed unread and logged.
pub struct OwnerOnly(UnixListener);

impl OwnerOnly {
    fn admits(stream: &UnixStream) -> Result<(), String> {
        let cred = stream
            .peer_cred()
            .map_err(|e| format!("cannot read the caller's credentials: {e}"))?;
        let me = nix::unistd::geteuid().as_raw();
        if cred.uid() == 0 || cred.uid() == me {
            Ok(())
        } else {
            Err(format!(
                "refused a caller of uid {} (pid {}): the API answers root and uid {me} only",
                cred.uid(),
                cred.pid().map_or("?".into(), |p| p.to_string())
            ))
        }
    }
}

impl axum::serve::Listener for OwnerOnly {
    type Io = UnixStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (UnixStream, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => match Self::admits(&stream) {
                    Ok(()) => return (stream, addr),
                    Err(why) => tracing::warn!("API: {why}"),
                },
                Err(e) => {
                    // E.g. EMFILE: wait instead of spinning.
                    tracing::debug!("API: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
