//! The example server's test harness: `examples/prefork_http.rs` built
//! with cargo, started on 127.0.0.1 with an ephemeral port, and driven by a
//! std-only HTTP client. Loopback only; every loop is bounded; every read
//! has a timeout. Linux-only checks read `/proc` to find the master's
//! children.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Builds the example once per test run, in its own target directory (so
/// the cargo running these tests never holds its lock), and returns the
/// binary's path.
pub fn binary() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // .../target/debug/deps/prefork_http-HASH → .../target
        let exe = std::env::current_exe().unwrap();
        let target = exe.ancestors().nth(3).unwrap().join("prefork-http-example");
        let status = Command::new(env!("CARGO"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--release",
                "--example",
                "prefork_http",
                "--bin",
                "shmzone-stat",
                "--target-dir",
            ])
            .arg(&target)
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --example prefork_http failed"
        );
        target.join("release/examples/prefork_http")
    })
}

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub pid: u32,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(binary())
            .args(["--listen", "127.0.0.1:0", "--log", "warn"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .parse()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut err = BufReader::new(&mut err);
            let mut line = String::new();
            while err.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
        });
        let pid = child.id();
        let s = Server {
            child: Some(child),
            addr,
            pid,
            log,
        };
        s.wait_workers(None, "workers to start");
        s
    }

    pub fn workers(&self) -> Vec<u32> {
        children(self.pid)
    }

    /// Waits until the master has `n` children (None: the number asked on
    /// the command line, 4 unless given).
    pub fn wait_workers(&self, n: Option<usize>, what: &str) {
        let n = n.unwrap_or(0);
        until(what, || {
            let w = self.workers();
            if n == 0 {
                !w.is_empty()
            } else {
                w.len() == n
            }
        });
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid as libc::pid_t, sig) }, 0);
    }

    /// SIGTERM; the master must exit 0 and leave no process behind.
    pub fn stop(mut self) {
        let workers = self.workers();
        assert!(!workers.is_empty());
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "master did not stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            status.code(),
            Some(0),
            "master exit status; log:\n{}",
            self.log()
        );
        for w in workers {
            assert!(
                !PathBuf::from(format!("/proc/{w}")).exists(),
                "worker {w} left behind"
            );
        }
        assert!(children(self.pid).is_empty());
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr).unwrap()
    }

    /// The value of a top-level integer field of /stats.
    pub fn stat(&self, path: &[&str]) -> u64 {
        let (code, body) = self.connect().get("/stats").unwrap();
        assert_eq!(code, 200);
        json_u64(&body, path).unwrap_or_else(|| panic!("no {path:?} in {body}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let workers = children(self.pid);
            let _ = c.kill();
            let _ = c.wait();
            for w in workers {
                // SAFETY: kills a leftover worker of our server.
                unsafe { libc::kill(w as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// The pids whose parent is `pid` (from /proc/*/stat).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces and parens.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        if f.next().and_then(|x| x.parse::<u32>().ok()) == Some(pid) && state != Some("Z") {
            out.push(p);
        }
    }
    out.sort_unstable();
    out
}

pub fn until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A keep-alive HTTP/1.1 client over one connection.
pub struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Client {
            r: BufReader::new(s),
        })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.r.get_mut().write_all(bytes)
    }

    pub fn get(&mut self, path: &str) -> io::Result<(u16, String)> {
        self.send_raw(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())?;
        self.read_response()
    }

    /// `method path` with `body` (sent with a Content-Length when not
    /// empty or when the method is PUT).
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<(u16, String)> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        if !body.is_empty() || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)?;
        self.read_response()
    }

    pub fn read_response(&mut self) -> io::Result<(u16, String)> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(bad("closed"));
        }
        let code: u16 = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("status line"))?;
        let mut len = None;
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return Err(bad("closed in head"));
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        // 204 and 304 have no body (and hyper sends no length).
        if code == 204 || code == 304 {
            len = len.or(Some(0));
        }
        let mut body = vec![0; len.ok_or_else(|| bad("no length"))?];
        self.r.read_exact(&mut body)?;
        Ok((code, String::from_utf8(body).map_err(|_| bad("utf8"))?))
    }

    /// Whether the server closed the connection (EOF within the timeout).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0))
    }
}

/// A u64 at `path` in a flat-enough JSON text (`["hits"]`,
/// `["limiter", "keys"]`): finds each key in turn after the previous one.
pub fn json_u64(body: &str, path: &[&str]) -> Option<u64> {
    let mut at = 0;
    for k in path {
        at += body[at..].find(&format!("\"{k}\":"))? + k.len() + 3;
    }
    let digits: String = body[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}
