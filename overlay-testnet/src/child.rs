//! Background processes inside a namespace, killed on drop.

use std::ops::{Deref, DerefMut};
use std::process::{Child, Command};

use crate::{Error, Result, command_line};

/// A background process started in a namespace; killed (SIGKILL) and reaped
/// on drop. Dereferences to the [`Child`].
#[derive(Debug)]
pub struct NsChild {
    child: Child,
    cmd: String,
}

impl NsChild {
    /// Spawns a prepared command, typically from [`Netns::cmd`](crate::Netns::cmd).
    pub fn spawn(cmd: &mut Command) -> Result<NsChild> {
        let line = command_line(cmd);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            cmd: line.clone(),
            source,
        })?;
        Ok(NsChild { child, cmd: line })
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.cmd
    }
}

impl Deref for NsChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for NsChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && let Err(err) = self.child.kill()
        {
            eprintln!("overlay-testnet: killing `{}`: {err}", self.cmd);
        }
        if let Err(err) = self.child.wait() {
            eprintln!("overlay-testnet: waiting for `{}`: {err}", self.cmd);
        }
    }
}
