//! Named network namespaces ([`Netns`]) and veth pairs between them
//! ([`veth`]).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

use crate::cleanup::{destroy, etc_dir, pids};
use crate::{Error, NsChild, Result, run_checked};

/// Every namespace this crate creates starts with this.
const PREFIX: &str = "ovt";
/// Longest namespace name this crate creates.
const MAX_NAME: usize = 32;

/// Process-global counter making names unique between threads.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Serialises `ip netns add` inside this process: concurrent first calls race
/// on making `/run/netns` a shared mount point.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// A named network namespace (`ip netns`), deleted on drop.
///
/// Its name is `ovt<pid>n<counter>-<label>` (at most 32 characters), unique
/// across the threads and processes of concurrent test runs. Its loopback
/// interface is up. Dropping it SIGKILLs every process still inside, deletes
/// the namespace and removes `/etc/netns/NAME` if a test created it; failures
/// there are printed to stderr, never panicked on.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates a namespace labelled `label` (truncated to fit the name
    /// length limit; characters other than `[A-Za-z0-9_.-]` become `_`) and
    /// brings its loopback interface up.
    pub fn new(label: &str) -> Result<Netns> {
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = make_name(std::process::id(), counter, label);
        {
            let _guard = CREATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let mut add = Command::new("ip");
            add.args(["netns", "add", &name]);
            run_checked(add)?;
        }
        // From here on, dropping `ns` deletes the namespace again.
        let ns = Netns {
            path: Path::new("/run/netns").join(&name),
            name,
        };
        ns.lo_up()?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the file that pins the namespace.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `/etc/netns/NAME`: files placed there (e.g. `resolv.conf`) are
    /// bind-mounted over `/etc` by `ip netns exec`. Not created by this
    /// crate; removed on drop if a test created it.
    pub fn etc_dir(&self) -> PathBuf {
        etc_dir(&self.name)
    }

    /// Opens the namespace file, e.g. for `setns(2)`.
    pub fn open(&self) -> Result<File> {
        File::open(&self.path).map_err(|source| Error::Io {
            what: format!("opening {}", self.path.display()),
            source,
        })
    }

    /// Brings the loopback interface up (done by [`Netns::new`]).
    pub fn lo_up(&self) -> Result<()> {
        self.ip(["link", "set", "lo", "up"]).map(drop)
    }

    /// `ip netns exec NAME program args...`, ready to be configured further.
    pub fn cmd<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program)
            .args(args);
        cmd
    }

    /// Runs `program args...` inside the namespace with stdin closed and
    /// returns its stdout; fails with the command line, exit status and
    /// stderr if it exits unsuccessfully.
    pub fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(self.cmd(program, args))
    }

    /// Runs `ip -n NAME args...`, checked like [`Netns::run`].
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(&self.name).args(args);
        run_checked(cmd)
    }

    /// Starts `program args...` inside the namespace in the background, with
    /// stdin closed and stdout/stderr inherited. The process is killed and
    /// reaped when the returned [`NsChild`] is dropped. For pipes, use
    /// `NsChild::spawn(ns.cmd(..).stdout(Stdio::piped()))`.
    pub fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<NsChild>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        NsChild::spawn(self.cmd(program, args).stdin(Stdio::null()))
    }

    /// Runs `f` on a fresh thread that has joined this namespace (via
    /// `setns(2)`), so the calling thread never changes namespace. A panic in
    /// `f` is propagated to the caller.
    ///
    /// Inside `f`, sockets, netlink (e.g. `nix::ifaddrs::getifaddrs`) and
    /// `/proc/thread-self/net` see this namespace; `/sys/class/net` does not
    /// (sysfs shows the namespace of whoever mounted it).
    pub fn enter<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = self.open()?;
        let name = &self.name;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Sys {
                    what: format!("setns into network namespace {name}"),
                    source,
                })?;
                drop(file);
                Ok(f())
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `f` on a new detached thread inside this namespace (for servers
    /// that outlive one call); the thread keeps the namespace alive until it ends.
    pub fn thread<F, R>(&self, f: F) -> Result<std::thread::JoinHandle<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let file = self.open()?;
        let name = self.name.clone();
        Ok(std::thread::spawn(move || {
            if let Err(e) = setns(&file, CloneFlags::CLONE_NEWNET) {
                panic!("setns into network namespace {name}: {e}");
            }
            drop(file);
            f()
        }))
    }

    /// Writes `value` to the sysctl `key` (e.g. `net.ipv4.ip_forward`) of
    /// this namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.enter(|| fs::write(&path, value))?
            .map_err(|source| Error::Io {
                what: format!("setting {key}={value} in {}", self.name),
                source,
            })
    }

    /// Disables IPv6 on all current and future interfaces of the namespace,
    /// keeping tests free of router solicitations and the like. A kernel
    /// without IPv6 is fine.
    pub fn disable_ipv6(&self) -> Result<()> {
        for key in [
            "net.ipv6.conf.all.disable_ipv6",
            "net.ipv6.conf.default.disable_ipv6",
        ] {
            match self.set_sysctl(key, "1") {
                Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Process ids of the processes inside the namespace.
    pub fn pids(&self) -> Result<Vec<i32>> {
        pids(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = destroy(&self.name) {
            eprintln!(
                "overlay-testnet: cleaning up namespace {}: {err}",
                self.name
            );
        }
    }
}

/// Creates a veth pair: interface `a_if` in `a` and its peer `b_if` in `b`,
/// both up. The pair is created directly inside `a`, never in the root
/// namespace.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.ip([
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    a.ip(["link", "set", a_if, "up"])?;
    b.ip(["link", "set", b_if, "up"])?;
    Ok(())
}

/// `ovt<pid>n<counter>-<label>`, with the label sanitised and truncated so
/// the whole name fits in [`MAX_NAME`] characters.
pub(crate) fn make_name(pid: u32, counter: u32, label: &str) -> String {
    let mut name = format!("{PREFIX}{pid}n{counter}-");
    let room = MAX_NAME.saturating_sub(name.len());
    name.extend(label.chars().take(room).map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
            c
        } else {
            '_'
        }
    }));
    name
}

/// The pid embedded in a name made by [`make_name`], if it is one.
pub(crate) fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, rest) = rest.split_once('n')?;
    let (counter, _label) = rest.split_once('-')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(pid) || !all_digits(counter) {
        return None;
    }
    pid.parse().ok().filter(|&pid| pid > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_parse_back() {
        let name = make_name(4_194_304, u32::MAX, "a-very-long-label-that-goes-on");
        assert!(name.len() <= MAX_NAME, "{name}");
        assert!(name.starts_with("ovt4194304n4294967295-"), "{name}");
        assert_eq!(owner_pid(&name), Some(4_194_304));

        assert_eq!(make_name(12, 3, "sw"), "ovt12n3-sw");
        assert_eq!(make_name(12, 3, "a b/ü"), "ovt12n3-a_b__");
        assert_eq!(owner_pid("ovt12n3-sw"), Some(12));
        assert_eq!(owner_pid("ovt12n3-"), Some(12));
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for name in [
            "",
            "ovt",
            "ovtn1-x",
            "ovt12n-x",
            "ovt12x3-y",
            "ovt12n3",
            "other",
            "ovt0n1-a",
        ] {
            assert_eq!(owner_pid(name), None, "{name}");
        }
    }
}
