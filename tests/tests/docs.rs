//! The command blocks of README.md and docs/*.md, run as a reader pastes them.
//!
//! Every shell block (fenced as `sh`, `bash`, `shell`, `console`, or with no language at
//! all) carries an HTML comment on the line before it that says how this test treats it:
//!
//! * `<!-- doc-test: run -->`: run with `bash -e -o pipefail`, after the document's earlier
//!   blocks; the variables it sets carry over to the document's later blocks.
//! * `<!-- doc-test: background -->`: a server. Started in its own process group; the next
//!   block runs once 127.0.0.1:PORT (below) accepts connections. It is stopped (SIGTERM to
//!   the group, by its PID) when the next background block starts and at the document's end.
//! * `<!-- doc-test: skip REASON -->`: not run, for the reason given (which is required).
//!
//! A shell block without a marker fails the test. Run and background blocks get, per
//! document, a fresh folder SANDBOX and a free port PORT, and these substitutions:
//! `/etc/vpcep` → `SANDBOX/etc/vpcep` (seeded with the package's default files),
//! `/var/lib/vpcep` → `SANDBOX/var/lib/vpcep` (not created: the server must create it),
//! `127.0.0.1:8080`, `0.0.0.0:8080` and `localhost:8080` → `127.0.0.1:PORT`. `vpcep` is the
//! binary under test, first on PATH; HOME is an empty `SANDBOX/home`; the working directory
//! is SANDBOX. Each block is bounded in time and killed (its process group) past it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use pulldown_cmark::{CodeBlockKind, Event, Parser, Tag, TagEnd};
use vpcep_tests::{
    harness::{TempDir, free_port},
    vpcep_bin,
};

/// How long one block may run (a build or the demo is skipped, not run).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a background block may take to accept connections.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Marker {
    Run,
    Background,
    Skip(String),
}

#[derive(Debug)]
struct Block {
    /// `FILE:LINE` of the opening fence.
    place: String,
    marker: Option<Marker>,
    /// Fenced with a shell language or none: it must be marked.
    shell: bool,
    text: String,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// README.md and every Markdown file of docs/, in a fixed order.
fn documents() -> Vec<PathBuf> {
    let root = workspace();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    docs.insert(0, root.join("README.md"));
    docs
}

fn parse_marker(html: &str) -> Option<Result<Marker, String>> {
    let body = html
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim()
        .strip_prefix("doc-test:")?
        .trim();
    Some(match body.split_once(char::is_whitespace) {
        None if body == "run" => Ok(Marker::Run),
        None if body == "background" => Ok(Marker::Background),
        Some(("skip", reason)) if !reason.trim().is_empty() => {
            Ok(Marker::Skip(reason.trim().to_owned()))
        }
        _ => Err(format!("unknown doc-test marker {html:?}")),
    })
}

/// The fenced and indented code blocks of a document, each with the marker right before it.
fn blocks(path: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path
        .strip_prefix(workspace())
        .unwrap()
        .display()
        .to_string();
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut out = Vec::new();
    // The last marker and the offset where it ends.
    let mut marker: Option<(Marker, usize)> = None;
    let mut current: Option<Block> = None;
    for (event, range) in Parser::new(&text).into_offset_iter() {
        match event {
            Event::Html(html) | Event::InlineHtml(html) => {
                if let Some(m) = parse_marker(&html) {
                    let m = m.unwrap_or_else(|e| panic!("{name}:{}: {e}", line_of(range.start)));
                    marker = Some((m, range.end));
                }
            }
            Event::Start(Tag::CodeBlock(kind)) => {
                let lang = match &kind {
                    CodeBlockKind::Fenced(info) => info.split_whitespace().next().unwrap_or(""),
                    CodeBlockKind::Indented => "",
                };
                // A marker counts only when nothing but blank space separates it from the fence.
                let marker = marker
                    .take()
                    .filter(|(_, end)| text[*end..range.start].trim().is_empty())
                    .map(|(m, _)| m);
                current = Some(Block {
                    place: format!("{name}:{}", line_of(range.start)),
                    marker,
                    shell: matches!(lang, "" | "sh" | "bash" | "shell" | "console"),
                    text: String::new(),
                });
            }
            Event::Text(t) => {
                if let Some(b) = current.as_mut() {
                    b.text.push_str(&t);
                }
            }
            Event::End(TagEnd::CodeBlock) => out.extend(current.take()),
            _ => {}
        }
    }
    out
}

#[test]
fn every_command_block_is_marked() {
    let mut unmarked = Vec::new();
    let mut total = 0;
    for doc in documents() {
        for b in blocks(&doc) {
            match (&b.marker, b.shell) {
                (None, true) => unmarked.push(b.place),
                (Some(_), false) => panic!("{}: a doc-test marker on a non-shell block", b.place),
                _ => total += usize::from(b.shell),
            }
        }
    }
    assert!(
        unmarked.is_empty(),
        "shell blocks without a `<!-- doc-test: run|background|skip REASON -->` line before \
         them (give diagrams and transcripts the language `text`): {unmarked:#?}"
    );
    assert!(total > 10, "only {total} shell blocks found");
}

/// One document's sandbox: its folder, port, environment and background processes.
struct Sandbox {
    // Dropped first: the server stops before its folder goes.
    background: Option<Group>,
    dir: TempDir,
    port: u16,
    path_var: String,
    /// Variables set by earlier blocks (`export -p` output).
    state: PathBuf,
    runs: usize,
}

/// A process group led by a child of ours, ended by the leader's PID (the group's id). The
/// leader is reaped only after the last signal to its group, so that the id cannot have been
/// reused by then.
struct Group {
    child: Option<Child>,
}

impl Group {
    fn spawn(cmd: &mut Command) -> Self {
        Self {
            child: Some(cmd.process_group(0).spawn().unwrap()),
        }
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) of the group that our own, not yet reaped, child leads.
            unsafe { libc::kill(-pid, sig) };
        }
    }

    /// Whether the leader has exited, leaving it unreaped (WNOWAIT).
    fn exited(&self) -> bool {
        let Some(pid) = self.pid() else { return true };
        // SAFETY: waitid(2) on our own child with a zeroed siginfo to fill.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) == 0
                && info.si_pid() == pid
        }
    }

    /// Waits up to `timeout` for the leader to exit; whether it did.
    fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.exited() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Ends the group (SIGTERM, up to `grace`, then SIGKILL to what is left, such as a
    /// process the block left in the background) and returns the leader's status.
    fn finish(&mut self, grace: Duration) -> Option<ExitStatus> {
        if !self.exited() {
            self.signal(libc::SIGTERM);
            self.wait_exit(grace);
        }
        self.signal(libc::SIGKILL);
        self.child.take().map(|mut c| c.wait().unwrap())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.finish(Duration::from_secs(10));
    }
}

impl Sandbox {
    fn new() -> Self {
        let dir = TempDir::new("docs");
        std::fs::create_dir_all(dir.0.join("home")).unwrap();
        // What the package installs into /etc/vpcep.
        let etc = dir.0.join("etc/vpcep");
        std::fs::create_dir_all(&etc).unwrap();
        let debian = workspace().join("vpcep-userspace/debian");
        for f in ["credentials.toml", "agent.toml", "control-plane.env"] {
            std::fs::copy(debian.join(f), etc.join(f)).unwrap();
        }
        // The package's mode: the control plane refuses a credentials file open to others.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            etc.join("credentials.toml"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let bin_dir = vpcep_bin().parent().unwrap().display().to_string();
        let path_var = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
        let state = dir.0.join(".doc-test-state");
        std::fs::write(&state, "").unwrap();
        Self {
            background: None,
            dir,
            port: free_port(),
            path_var,
            state,
            runs: 0,
        }
    }

    fn substitute(&self, text: &str) -> String {
        let root = self.dir.0.display().to_string();
        let addr = format!("127.0.0.1:{}", self.port);
        text.replace("/etc/vpcep", &format!("{root}/etc/vpcep"))
            .replace("/var/lib/vpcep", &format!("{root}/var/lib/vpcep"))
            .replace("127.0.0.1:8080", &addr)
            .replace("0.0.0.0:8080", &addr)
            .replace("localhost:8080", &addr)
    }

    /// bash running `block` after the state of the earlier blocks, saving its own when
    /// `save` (a server's never ends normally).
    fn command(&mut self, block: &Block, log: &str, save: bool) -> (Command, PathBuf) {
        let state = self.state.display();
        let save = if save {
            format!("export -p > '{state}'\n")
        } else {
            String::new()
        };
        let script = format!(
            "set -e -o pipefail\nset -a\n. '{state}'\n{}\n{save}",
            self.substitute(&block.text)
        );
        self.runs += 1;
        let log = self.dir.0.join(format!("{log}-{}.log", self.runs));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .current_dir(&self.dir.0)
            .env_clear()
            .env("PATH", &self.path_var)
            .env("HOME", self.dir.0.join("home"))
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        (cmd, log)
    }

    fn run(&mut self, block: &Block) {
        let (mut cmd, log) = self.command(block, "run", true);
        let mut group = Group::spawn(&mut cmd);
        let in_time = group.wait_exit(BLOCK_TIMEOUT);
        let status = group.finish(Duration::ZERO);
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        match status.filter(|_| in_time) {
            Some(s) if s.success() => {}
            Some(s) => panic!(
                "{}: the block failed ({s}):\n{}\n--- output ---\n{output}",
                block.place, block.text
            ),
            None => panic!(
                "{}: the block ran longer than {} s:\n{}\n--- output ---\n{output}",
                block.place,
                BLOCK_TIMEOUT.as_secs(),
                block.text
            ),
        }
    }

    /// Starts a server block and waits until its port accepts connections.
    fn background(&mut self, block: &Block) {
        // The previous server stops first, as Ctrl-C in its terminal would.
        self.background = None;
        let (mut cmd, log) = self.command(block, "background", false);
        let group = Group::spawn(&mut cmd);
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let output = || std::fs::read_to_string(&log).unwrap_or_default();
            if group.exited() {
                panic!("{}: the server exited:\n{}", block.place, output());
            }
            assert!(
                Instant::now() < deadline,
                "{}: nothing listens on port {} after {} s:\n{}",
                block.place,
                self.port,
                LISTEN_TIMEOUT.as_secs(),
                output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.background = Some(group);
    }
}

/// Runs one document's run and background blocks in order; returns how many ran.
fn run_document(doc: &Path) -> usize {
    let mut sandbox = Sandbox::new();
    let mut ran = 0;
    for block in blocks(doc) {
        match block.marker {
            Some(Marker::Run) => sandbox.run(&block),
            Some(Marker::Background) => sandbox.background(&block),
            Some(Marker::Skip(_)) | None => continue,
        }
        ran += 1;
    }
    ran
}

#[test]
fn command_blocks_run() {
    let mut ran = 0;
    for doc in documents() {
        ran += run_document(&doc);
    }
    assert!(ran >= 5, "only {ran} blocks ran");
}
