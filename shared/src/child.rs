//! Child processes that end with the process that started them, however it ends (a finished
//! test binary, a panic, a SIGKILL from a CI timeout). Test harnesses keep shared server
//! fixtures in statics, which are never dropped, so kill-on-drop alone leaves them running.
//!
//! The child asks the kernel for SIGKILL when its parent *thread* ends (`PR_SET_PDEATHSIG`), so
//! every child is spawned from one thread that lives as long as the process.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Request = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("tied-child-spawner".into())
            .spawn(move || {
                // Ends only with the process (the sender is in a static).
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_parent_death_signal(&mut cmd));
                }
            })
            .expect("spawning the child-spawner thread");
        Mutex::new(tx)
    })
}

#[allow(unsafe_code)]
fn spawn_with_parent_death_signal(cmd: &mut Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe calls
    // (prctl, getppid, _exit); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have ended between fork and prctl: then no signal would come.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Spawns `cmd` so that the child is killed (SIGKILL) when this process ends.
pub fn spawn_tied(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("child spawner poisoned"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("child spawner gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("child spawner gone"))?
}

/// Stops the process `pid` (SIGSTOP) until [`resume`]: a process that hangs without dying.
pub fn pause(pid: u32) -> io::Result<()> {
    signal(pid, libc::SIGSTOP)
}

/// Lets a process stopped by [`pause`] run again (SIGCONT).
pub fn resume(pid: u32) -> io::Result<()> {
    signal(pid, libc::SIGCONT)
}

#[allow(unsafe_code)]
fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of this process.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    const HELPER: &str = "SEAM_TIED_CHILD_HELPER";

    /// Run by the test below in a process of its own: starts a tied `sleep`, prints its pid and
    /// returns, which ends that process. Does nothing in a normal test run.
    #[test]
    fn helper_starts_a_tied_sleep_and_exits() {
        if std::env::var_os(HELPER).is_none() {
            return;
        }
        let mut cmd = Command::new("sleep");
        // Not holding the helper's output open: the test reads it to the end.
        cmd.arg("600").stdout(Stdio::null()).stderr(Stdio::null());
        // Deliberately not waited for: it must die with this process.
        #[allow(clippy::zombie_processes)]
        let child = spawn_tied(cmd).expect("spawning sleep");
        println!("tied-child-pid {}", child.id());
    }

    fn state(pid: u32) -> Option<char> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        s.rsplit(')').next()?.trim_start().chars().next()
    }

    #[test]
    fn a_paused_child_stops_until_resumed() {
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        let mut child = spawn_tied(cmd).unwrap();
        let pid = child.id();
        pause(pid).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while state(pid) != Some('T') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(state(pid), Some('T'), "not stopped");
        resume(pid).unwrap();
        while state(pid) == Some('T') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            matches!(state(pid), Some('S' | 'R')),
            "not running again: {:?}",
            state(pid)
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(pause(u32::MAX).is_err());
    }

    fn alive(pid: u32) -> bool {
        // Gone, or a zombie nobody has reaped yet: either way not running.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    }

    #[test]
    fn a_tied_child_is_killed_when_the_process_that_started_it_ends() {
        let exe = std::env::current_exe().unwrap();
        let mut helper = Command::new(exe)
            .args([
                "--exact",
                "child::tests::helper_starts_a_tied_sleep_and_exits",
            ])
            .args(["--nocapture", "--test-threads", "1"])
            .env(HELPER, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Read to the end, so that the helper's last lines find the pipe open.
        let lines: Vec<String> = BufReader::new(helper.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .collect();
        let pid: u32 = lines
            .iter()
            .find_map(|l| Some(l.split_once("tied-child-pid ")?.1.trim().parse().unwrap()))
            .expect("the helper prints the child's pid");
        assert!(helper.wait().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let still = alive(pid);
        if still {
            // Do not leave it behind if the mechanism failed.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        assert!(
            !still,
            "the tied sleep {pid} outlived the process that started it"
        );
    }
}
