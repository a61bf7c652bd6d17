//! The job ↔ node ↔ VM mapping table, kept in one SQLite file.
//!
//! Owns: the database file (its directory is created 0700, the file is 0600), connection
//! setup (WAL journal, `synchronous = FULL`, a busy timeout), versioned schema migrations
//! (`PRAGMA user_version`), every read and write of the `mapping` table, and telling a
//! corrupt file ([`MappingError::NotADatabase`]) from other failures. Only reconcile moves
//! such a file aside and starts afresh ([`MappingDb::open_or_set_aside`]); everyone else
//! fails with the error, which names the file.
//!
//! Does not own: talking to OpenNebula, deciding what a row's state should be (that is
//! `provision`, `teardown` and `reconcile`), or locking between reconcile passes.
//!
//! Many short-lived processes (prologs and epilogs of concurrent jobs, the reconcile daemon)
//! open the same file at once. So every change runs in its own `BEGIN IMMEDIATE`
//! transaction, which takes the write lock up front (a deferred transaction that upgrades
//! from read to write can fail with `SQLITE_BUSY` without ever calling the busy handler).
//! Writers first queue for their turn in arrival order, on locks of `<path>.writers` waited
//! for in the kernel (see `writers_turn`); SQLite's own lock is then normally free, and its
//! busy timeout waits only for a process outside slurm-one. Each wait lasts at most the
//! busy timeout, then the call fails with [`MappingError::Busy`]. Nothing is cached between
//! calls: each call sees the file as it is.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

/// Busy timeout used when the configuration does not set one.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema migrations, in order; migration `n` (1-based) brings `user_version` from `n - 1`
/// to `n`. Append new migrations; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the mapping table. STRICT so a stray type can't slip in; the primary key is the
    // unique (cluster, job, node) key and also serves per-job lookups.
    "CREATE TABLE mapping (
        cluster     TEXT    NOT NULL,
        job_id      INTEGER NOT NULL CHECK (job_id >= 0),
        node        TEXT    NOT NULL,
        vm_id       INTEGER CHECK (vm_id >= 0),
        state       TEXT    NOT NULL,
        request_tag TEXT    NOT NULL UNIQUE,
        created     INTEGER NOT NULL,
        updated     INTEGER NOT NULL,
        detail      TEXT,
        PRIMARY KEY (cluster, job_id, node)
    ) STRICT;
    CREATE INDEX mapping_by_node ON mapping (cluster, node);
    CREATE INDEX mapping_by_vm ON mapping (vm_id);",
];

/// Schema version this build creates and understands: the number of entries in
/// `MIGRATIONS` (a test keeps the two in step).
pub const SCHEMA_VERSION: u32 = 1;

/// How often the journal-mode switch is retried while another process holds the lock.
const JOURNAL_MODE_RETRY: Duration = Duration::from_millis(20);

const COLUMNS: &str = "cluster, job_id, node, vm_id, state, request_tag, created, updated, detail";

/// Lifecycle state of one mapping row, stored as text (see [`RowState::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    /// Written before the VM create call; `vm_id` is still NULL.
    Creating,
    /// The VM exists and is booting.
    Booting,
    /// The VM is up and serving the job.
    Running,
    /// The VM is suspended (job suspended).
    Suspended,
    /// Teardown has started; the row goes away once the VM is gone.
    TearingDown,
}

impl RowState {
    /// Every state, in lifecycle order.
    pub const ALL: [RowState; 5] = [
        RowState::Creating,
        RowState::Booting,
        RowState::Running,
        RowState::Suspended,
        RowState::TearingDown,
    ];

    /// The text stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Creating => "creating",
            RowState::Booting => "booting",
            RowState::Running => "running",
            RowState::Suspended => "suspended",
            RowState::TearingDown => "tearing_down",
        }
    }

    /// Parses the text stored in the `state` column; `None` for anything else.
    pub fn from_db(s: &str) -> Option<RowState> {
        RowState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for RowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One mapping row: one node of one job and the VM that backs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// SLURM cluster name.
    pub cluster: String,
    /// SLURM job id.
    pub job_id: u32,
    /// SLURM node name.
    pub node: String,
    /// OpenNebula VM id; `None` while the row is [`RowState::Creating`].
    pub vm_id: Option<u32>,
    /// Lifecycle state.
    pub state: RowState,
    /// Unique tag the provisioner puts on the VM so a retried create can find it.
    pub request_tag: String,
    /// When the row was first written (unix seconds).
    pub created: i64,
    /// When the row last changed (unix seconds).
    pub updated: i64,
    /// Free text: host, cpu share, last event.
    pub detail: Option<String>,
}

/// The step a database error happened in, with the ids it concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Configuring the connection (busy timeout, WAL journal, synchronous mode).
    Configure,
    /// Reading `PRAGMA user_version`.
    ReadSchemaVersion,
    /// `PRAGMA quick_check` (reconcile checks the whole file before trusting it).
    QuickCheck,
    /// Applying one schema migration.
    Migrate {
        /// Version the migration brings the schema to.
        version: u32,
    },
    /// [`MappingDb::insert_creating`].
    InsertCreating {
        /// Cluster.
        cluster: String,
        /// Job id.
        job_id: u32,
        /// Node.
        node: String,
        /// Request tag.
        request_tag: String,
    },
    /// [`MappingDb::set_vm`].
    SetVm {
        /// Request tag.
        request_tag: String,
        /// VM id being recorded.
        vm_id: u32,
    },
    /// [`MappingDb::set_state`].
    SetState {
        /// Cluster.
        cluster: String,
        /// Job id.
        job_id: u32,
        /// Node.
        node: String,
        /// New state.
        state: RowState,
    },
    /// [`MappingDb::claim_teardown`].
    ClaimTeardown {
        /// Cluster.
        cluster: String,
        /// Job id.
        job_id: u32,
    },
    /// [`MappingDb::job_rows`].
    JobRows {
        /// Cluster.
        cluster: String,
        /// Job id.
        job_id: u32,
    },
    /// [`MappingDb::all_rows`].
    AllRows {
        /// Cluster.
        cluster: String,
    },
    /// [`MappingDb::node_rows`].
    NodeRows {
        /// Cluster.
        cluster: String,
        /// Node.
        node: String,
    },
    /// [`MappingDb::tag_row`].
    TagRow {
        /// Request tag.
        request_tag: String,
    },
    /// [`MappingDb::delete_row`].
    DeleteRow {
        /// Cluster.
        cluster: String,
        /// Job id.
        job_id: u32,
        /// Node.
        node: String,
    },
    /// [`MappingDb::delete_job`].
    DeleteJob {
        /// Cluster.
        cluster: String,
        /// Job id.
        job_id: u32,
    },
    /// [`MappingDb::upsert_from_tags`].
    UpsertFromTags {
        /// Cluster.
        cluster: String,
        /// Job id.
        job_id: u32,
        /// Node.
        node: String,
        /// VM id read from the tags.
        vm_id: Option<u32>,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Configure => write!(f, "configuring the connection (busy timeout, WAL)"),
            Op::ReadSchemaVersion => write!(f, "reading the schema version"),
            Op::QuickCheck => write!(f, "checking its integrity (PRAGMA quick_check)"),
            Op::Migrate { version } => write!(f, "applying schema migration {version}"),
            Op::InsertCreating {
                cluster,
                job_id,
                node,
                request_tag,
            } => write!(
                f,
                "inserting the creating row for job {job_id} node {node} \
                 (cluster {cluster}, request tag {request_tag})"
            ),
            Op::SetVm { request_tag, vm_id } => {
                write!(f, "recording VM {vm_id} for request tag {request_tag}")
            }
            Op::SetState {
                cluster,
                job_id,
                node,
                state,
            } => write!(
                f,
                "setting job {job_id} node {node} (cluster {cluster}) to {state}"
            ),
            Op::ClaimTeardown { cluster, job_id } => {
                write!(
                    f,
                    "claiming the rows of job {job_id} (cluster {cluster}) for teardown"
                )
            }
            Op::JobRows { cluster, job_id } => {
                write!(f, "reading the rows of job {job_id} (cluster {cluster})")
            }
            Op::AllRows { cluster } => write!(f, "reading all rows of cluster {cluster}"),
            Op::NodeRows { cluster, node } => {
                write!(f, "reading the rows of node {node} (cluster {cluster})")
            }
            Op::TagRow { request_tag } => {
                write!(f, "reading the row with request tag {request_tag}")
            }
            Op::DeleteRow {
                cluster,
                job_id,
                node,
            } => write!(
                f,
                "deleting the row of job {job_id} node {node} (cluster {cluster})"
            ),
            Op::DeleteJob { cluster, job_id } => {
                write!(f, "deleting the rows of job {job_id} (cluster {cluster})")
            }
            Op::UpsertFromTags {
                cluster,
                job_id,
                node,
                vm_id,
            } => {
                write!(
                    f,
                    "rebuilding the row of job {job_id} node {node} (cluster {cluster}) from the tags of VM "
                )?;
                match vm_id {
                    Some(id) => write!(f, "{id}"),
                    None => write!(f, "(none)"),
                }
            }
        }
    }
}

/// Errors of the mapping database. Each names the failed step and carries the database path
/// and the job, node, VM or request tag concerned.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The database directory could not be created.
    #[error("creating mapping database directory {dir} (mode 0700)")]
    CreateDir {
        /// Directory that was being created.
        dir: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The database file could not be created or inspected.
    #[error("creating mapping database file {path} (mode 0600)")]
    CreateFile {
        /// Database path.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The database file was readable by others and could not be restricted to 0600.
    #[error("restricting mapping database file {path} to mode 0600")]
    RestrictMode {
        /// Database path.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// SQLite could not open the file.
    #[error("opening mapping database {path}")]
    Open {
        /// Database path.
        path: PathBuf,
        /// Underlying error.
        source: rusqlite::Error,
    },
    /// The file is not an SQLite database, or SQLite found it corrupt (`SQLITE_NOTADB`,
    /// `SQLITE_CORRUPT`, or problems reported by `PRAGMA quick_check`). Hooks and the CLI
    /// fail with it; only reconcile ([`MappingDb::open_or_set_aside`]) moves the file aside.
    #[error(
        "mapping database {path} is corrupt or not an SQLite database ({reason}) while {op}; \
         `slurm-one reconcile` moves it aside and rebuilds the rows of live jobs from the VMs' tags"
    )]
    NotADatabase {
        /// Database path.
        path: PathBuf,
        /// Step that found out.
        op: Box<Op>,
        /// What SQLite said ("file is not a database", "database disk image is
        /// malformed", or the first problems `quick_check` listed).
        reason: String,
        /// Underlying error (`None` when `quick_check` reported the problems as rows).
        source: Option<rusqlite::Error>,
    },
    /// Reconcile could not move a corrupt database (or its `-wal`/`-shm`) out of the way.
    #[error("moving the corrupt mapping database {from} aside to {to}")]
    MoveAside {
        /// File being moved.
        from: PathBuf,
        /// Where it was going.
        to: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// Another reconcile held the recovery lock for longer than the busy timeout.
    #[error("another process is recovering the corrupt mapping database {path}: lock {lock} held for longer than {timeout:?}")]
    RecoveryLocked {
        /// Database path.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// How long this process waited.
        timeout: Duration,
        /// Underlying error, when taking the lock failed for another reason.
        source: Option<io::Error>,
    },
    /// The writers' queue file `<path>.writers` could not be opened, read, written or
    /// locked.
    #[error("taking the mapping database writers' lock {lock}")]
    WritersLock {
        /// The lock file.
        lock: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// Another process held the lock for longer than the busy timeout.
    #[error("mapping database {path} busy/locked for longer than the {timeout:?} busy timeout while {op}")]
    Busy {
        /// Database path.
        path: PathBuf,
        /// Step that waited.
        op: Box<Op>,
        /// Busy timeout in force.
        timeout: Duration,
        /// Underlying error.
        source: rusqlite::Error,
    },
    /// The file was written by a newer slurm-one with a schema this build does not know.
    #[error("mapping database {path} has schema version {found}, newer than version {supported} known to this build")]
    SchemaTooNew {
        /// Database path.
        path: PathBuf,
        /// `user_version` in the file.
        found: i64,
        /// [`SCHEMA_VERSION`].
        supported: u32,
    },
    /// The (cluster, job, node) key already has a row.
    #[error("job {job_id} node {node} (cluster {cluster}) is already mapped in {path} (state {state}, VM {vm_id:?})")]
    AlreadyMapped {
        /// Database path.
        path: PathBuf,
        /// Cluster.
        cluster: String,
        /// Job id.
        job_id: u32,
        /// Node.
        node: String,
        /// State of the existing row.
        state: RowState,
        /// VM of the existing row.
        vm_id: Option<u32>,
    },
    /// The request tag is already used by another (cluster, job, node).
    #[error("request tag {request_tag} is already used in {path} by job {job_id} node {node} (cluster {cluster})")]
    RequestTagTaken {
        /// Database path.
        path: PathBuf,
        /// Request tag.
        request_tag: String,
        /// Cluster of the row holding the tag.
        cluster: String,
        /// Job of the row holding the tag.
        job_id: u32,
        /// Node of the row holding the tag.
        node: String,
    },
    /// No row carries this request tag.
    #[error("no row with request tag {request_tag} in {path} (recording VM {vm_id})")]
    UnknownRequestTag {
        /// Database path.
        path: PathBuf,
        /// Request tag.
        request_tag: String,
        /// VM that was being recorded.
        vm_id: u32,
    },
    /// The row already records a different VM; overwriting it would lose track of that VM.
    #[error(
        "request tag {request_tag} in {path} already records VM {existing}, refusing VM {vm_id}"
    )]
    VmAlreadySet {
        /// Database path.
        path: PathBuf,
        /// Request tag.
        request_tag: String,
        /// VM already recorded.
        existing: u32,
        /// VM that was being recorded.
        vm_id: u32,
    },
    /// No row for this (cluster, job, node).
    #[error("no mapping for job {job_id} node {node} (cluster {cluster}) in {path}")]
    NoSuchRow {
        /// Database path.
        path: PathBuf,
        /// Cluster.
        cluster: String,
        /// Job id.
        job_id: u32,
        /// Node.
        node: String,
    },
    /// A stored value could not be decoded (unknown state text, id out of range).
    #[error("mapping database {path}: bad value {value:?} in column {column} while {op}")]
    BadValue {
        /// Database path.
        path: PathBuf,
        /// Step that read it.
        op: Box<Op>,
        /// Column name.
        column: &'static str,
        /// The stored value, as text.
        value: String,
    },
    /// Any other SQLite failure in a step.
    #[error("mapping database {path}: {op} failed")]
    Statement {
        /// Database path.
        path: PathBuf,
        /// Step that failed.
        op: Box<Op>,
        /// Underlying error.
        source: rusqlite::Error,
    },
}

impl MappingError {
    /// True for [`MappingError::NotADatabase`]: the file itself is unusable (corrupt or not
    /// SQLite), as opposed to busy, missing rows or a failed statement.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, MappingError::NotADatabase { .. })
    }
}

/// What SQLite said, without rusqlite's wrapping: "file is not a database", "database disk
/// image is malformed", ...
fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(err, Some(msg)) if !msg.is_empty() => {
            format!("{msg}; SQLite code {}", err.extended_code)
        }
        other => other.to_string(),
    }
}

/// What [`MappingDb::open_or_set_aside`] did with a corrupt file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Where the corrupt file is now; its `-wal`/`-shm`/`-journal`, if there were any, are
    /// beside it with the same suffixes.
    pub moved_to: PathBuf,
    /// Why it was moved: SQLite's complaint and the step that met it.
    pub reason: String,
}

/// `<path><suffix>` (the path is a file name; `with_extension` would replace `.db`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Files SQLite keeps beside the database; they belong to it and move with it.
const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// How often a reconcile retries the recovery lock while another one holds it.
const RECOVERY_LOCK_RETRY: Duration = Duration::from_millis(50);

/// Opens (creating it 0600) a lock file and tries its exclusive `flock` without waiting:
/// `Ok(true)` taken, `Ok(false)` another holds it.
fn try_lock_file(lock: &Path) -> io::Result<(fs::File, bool)> {
    use std::os::unix::io::AsRawFd;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(lock)?;
    // SAFETY: the fd is valid while `file` lives; flock has no other preconditions.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok((file, true));
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::WouldBlock {
        Ok((file, false))
    } else {
        Err(err)
    }
}

/// Takes the exclusive `flock` on `<path>.recover-lock` (created 0600) that serializes
/// moving a corrupt database aside, waiting up to `timeout`. Held while the returned file
/// lives.
fn recovery_lock(path: &Path, timeout: Duration) -> Result<fs::File, MappingError> {
    let lock = with_suffix(path, ".recover-lock");
    let locked = |source: Option<io::Error>| MappingError::RecoveryLocked {
        path: path.to_path_buf(),
        lock: lock.clone(),
        timeout,
        source,
    };
    let deadline = Instant::now() + timeout;
    loop {
        match try_lock_file(&lock) {
            Ok((file, true)) => return Ok(file),
            Ok((_, false)) => {}
            Err(e) => return Err(locked(Some(e))),
        }
        if Instant::now() >= deadline {
            return Err(locked(None));
        }
        thread::sleep(RECOVERY_LOCK_RETRY);
    }
}

// The writers' queue.
//
// Why: one lock that every writer waits for is not first come, first served. On unlock
// Linux wakes every waiter (fs/locks.c, `locks_wake_up_blocks`) and whichever runs first
// takes the lock, so with 31 processes waiting the wait was a lottery: the median insert
// took under 1 ms, the slowest 1 in 100 writes 60-90 ms (scripts/bench row 6, 32
// processes, with an `flock` of `<db>.writers`). In ticket order each writer waits about as
// long as the writers ahead of it need (15-20 ms there, at most about 40).
//
// How: tickets, and a lock per ticket that only the next writer waits for. All are
// open-file-description (OFD) locks on single bytes of `<db>.writers`, which the kernel
// releases when the file is closed, also when its process exits or is killed, so a dead
// writer stalls nobody:
// - The file's text is the next ticket number. Under the lock of byte 0 (held for a few
//   system calls) a writer reads number t, locks byte 1 + t (its ticket), stores t + 1 and
//   unlocks byte 0.
// - It then waits for the lock of byte t, which the writer with ticket t - 1 holds until
//   its write is done (or it gave up or died). Only that one waiter is woken, so turns go
//   in ticket order. Its own byte it unlocks when done, waking the next writer.
// Each writer waits only for the number just below its own, so waits never form a cycle.
// Numbers are never reused, so unlike one lock file per ticket (which cost about 0.1 ms
// more per write on ext4) nothing is created, removed or left behind; `/proc/locks` lists
// the queue (OFDLCK lines of the file's inode).
// The queue only orders slurm-one's writers: SQLite's lock (`BEGIN IMMEDIATE`) still keeps
// the writes apart. So a broken queue (a hole left by a writer that gave up or died, a lost
// or garbled number, an older slurm-one that took an `flock` of the file during an upgrade)
// costs fairness, never a write.

/// The file of the writers' queue, beside the database.
const QUEUE_SUFFIX: &str = ".writers";
/// Byte of the queue file whose lock guards the ticket number.
const DISPENSER_BYTE: i64 = 0;
/// Ticket numbers start again from 0 here (2^62 writes: never, in practice), which keeps
/// every byte a valid file offset.
const TICKET_LIMIT: u64 = 1 << 62;

/// Byte of the queue file that the holder of ticket `t` locks.
fn ticket_byte(t: u64) -> i64 {
    // Below 2^62 + 1: fits.
    (t % TICKET_LIMIT) as i64 + 1
}

/// Sets (`F_WRLCK`) or clears (`F_UNLCK`) the OFD lock of one byte of `file` with `cmd`
/// (`F_OFD_SETLK`, or `F_OFD_SETLKW` to wait), retrying when a signal interrupts it.
/// `Ok(false)`: `F_OFD_SETLK` found the byte locked through another open file description.
fn byte_lock(
    file: &fs::File,
    byte: i64,
    cmd: libc::c_int,
    l_type: libc::c_int,
) -> io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: all zeroes is a valid `struct flock` (and `l_pid` must be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    loop {
        // SAFETY: the fd is valid while `file` lives and `fl` outlives the call.
        if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &fl) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN | libc::EACCES) if cmd == libc::F_OFD_SETLK => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Takes the lock of `byte` of `file` if it comes within `timeout` of `start`; `Ok(None)`
/// if not. The wait is in the kernel, which wakes the waiter the moment the lock is free;
/// it runs on a helper thread because a blocking lock has no timeout. `file` must be the
/// only descriptor of its open file description: a helper that gets the lock after the
/// deadline finds nobody listening and drops the file, which releases the lock at once.
fn lock_by(
    file: fs::File,
    byte: i64,
    start: Instant,
    timeout: Duration,
) -> io::Result<Option<fs::File>> {
    if byte_lock(&file, byte, libc::F_OFD_SETLK, libc::F_WRLCK)? {
        return Ok(Some(file));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    thread::Builder::new()
        .name("mapping-queue".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let taken = byte_lock(&file, byte, libc::F_OFD_SETLKW, libc::F_WRLCK).map(|_| file);
            // Unsent (the caller gave up), the file is dropped here, releasing the lock.
            let _ = tx.send(taken);
        })?;
    match rx.recv_timeout(timeout.saturating_sub(start.elapsed())) {
        Ok(taken) => taken.map(Some),
        Err(_) => Ok(None),
    }
}

/// Reads the next ticket number: the first line of the queue file, as decimal text. An
/// empty file (new, or kept from a version without tickets) or garbage counts as 0, which
/// costs fairness at most (see the queue's comment above). Also returns the file's length.
fn read_ticket_number(queue: &fs::File) -> io::Result<(u64, usize)> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 64];
    let n = queue.read_at(&mut buf, 0)?;
    let next = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.lines().next())
        .and_then(|line| line.trim().parse().ok())
        .filter(|&t| t < TICKET_LIMIT)
        .unwrap_or(0);
    Ok((next, n))
}

/// Stores the next ticket number, as fixed-width text so each store overwrites the last.
/// Not synced: after a crash an older number costs fairness at most.
fn write_ticket_number(queue: &fs::File, next: u64, old_len: usize) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let text = format!("{next:020}\n");
    queue.write_all_at(text.as_bytes(), 0)?;
    if old_len > text.len() {
        queue.set_len(text.len() as u64)?;
    }
    Ok(())
}

/// This writer's place in the queue: the lock of its ticket's byte, which the next writer
/// waits for. Dropping it hands the turn on.
struct WritersTurn {
    queue: fs::File,
    ticket: u64,
}

impl Drop for WritersTurn {
    fn drop(&mut self) {
        // Closing the file would release the lock as well; this says what happens.
        let _ = byte_lock(
            &self.queue,
            ticket_byte(self.ticket),
            libc::F_OFD_SETLK,
            libc::F_UNLCK,
        );
    }
}

/// Waits up to `timeout` for this process's turn to write, in ticket order (see the queue's
/// comment above): takes a ticket, then waits for the lock of the ticket before it.
/// `Ok(None)`: the deadline passed; this writer's ticket is then released at once, so the
/// writers behind it carry on.
fn writers_turn(path: &Path, timeout: Duration) -> Result<Option<WritersTurn>, MappingError> {
    let start = Instant::now();
    let lock = with_suffix(path, QUEUE_SUFFIX);
    let failed = |source| MappingError::WritersLock {
        lock: lock.clone(),
        source,
    };
    let open = || {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&lock)
    };
    let queue = open().map_err(failed)?;
    let Some(queue) = lock_by(queue, DISPENSER_BYTE, start, timeout).map_err(failed)? else {
        return Ok(None);
    };
    let (mut t, old_len) = read_ticket_number(&queue).map_err(failed)?;
    // A live writer holds this number only if the stored number went back (the file was
    // truncated or garbled): take the next free one.
    while !byte_lock(&queue, ticket_byte(t), libc::F_OFD_SETLK, libc::F_WRLCK).map_err(failed)? {
        t = (t + 1) % TICKET_LIMIT;
    }
    // From here on, dropping `turn` (on an error too) releases the ticket.
    let turn = WritersTurn { queue, ticket: t };
    write_ticket_number(&turn.queue, (t + 1) % TICKET_LIMIT, old_len).map_err(failed)?;
    byte_lock(
        &turn.queue,
        DISPENSER_BYTE,
        libc::F_OFD_SETLK,
        libc::F_UNLCK,
    )
    .map_err(failed)?;
    let Some(before) = t.checked_sub(1) else {
        return Ok(Some(turn));
    };
    // Its own open file description, so that giving up releases our ticket (`turn`) at once
    // while the helper still waits.
    let ahead = open().map_err(failed)?;
    // Getting the lock means the writer ahead is done, gave up or died: our turn. Dropping
    // `ahead` releases it again at once.
    Ok(lock_by(ahead, ticket_byte(before), start, timeout)
        .map_err(failed)?
        .map(|_ahead| turn))
}

/// Renames `path` to `<path>.corrupt-<unix time>` (`.1`, `.2`, ... appended if taken), and
/// each companion file that exists to the new name plus its suffix. Returns the new name.
fn set_aside(path: &Path) -> Result<PathBuf, MappingError> {
    let stamp = now();
    let to = (0u32..)
        .map(|n| {
            let suffix = if n == 0 {
                format!(".corrupt-{stamp}")
            } else {
                format!(".corrupt-{stamp}.{n}")
            };
            with_suffix(path, &suffix)
        })
        .find(|p| fs::symlink_metadata(p).is_err())
        .unwrap_or_else(|| with_suffix(path, ".corrupt"));
    let moved = |from: &Path, to: &Path| -> Result<bool, MappingError> {
        match fs::rename(from, to) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(MappingError::MoveAside {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
                source,
            }),
        }
    };
    // The companions first: while the corrupt main file is still in place no opener can
    // start a valid WAL beside it, so only stale files are moved. Once the main file is
    // gone, openers create a fresh table and its own journal files.
    for suffix in COMPANIONS {
        moved(&with_suffix(path, suffix), &with_suffix(&to, suffix))?;
    }
    moved(path, &to)?;
    Ok(to)
}

/// An open connection to the mapping database. Cheap to open; meant to live for one hook
/// run or one reconcile pass.
#[derive(Debug)]
pub struct MappingDb {
    conn: Connection,
    path: PathBuf,
    busy_timeout: Duration,
}

/// A row as read, before its values are checked.
struct RawRow {
    cluster: String,
    job_id: i64,
    node: String,
    vm_id: Option<i64>,
    state: String,
    request_tag: String,
    created: i64,
    updated: i64,
    detail: Option<String>,
}

impl RawRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            cluster: r.get(0)?,
            job_id: r.get(1)?,
            node: r.get(2)?,
            vm_id: r.get(3)?,
            state: r.get(4)?,
            request_tag: r.get(5)?,
            created: r.get(6)?,
            updated: r.get(7)?,
            detail: r.get(8)?,
        })
    }
}

fn now() -> i64 {
    // A clock before 1970 is not worth failing a hook for; 0 still orders correctly.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

impl MappingDb {
    /// Opens (creating if missing) the database at `path` and brings its schema up to
    /// [`SCHEMA_VERSION`]. A missing directory is created with mode 0700, a new file with
    /// mode 0600; an existing file readable by group or others is restricted to 0600.
    /// `busy_timeout` bounds every wait for another process's lock
    /// ([`DEFAULT_BUSY_TIMEOUT`] unless configured).
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Self, MappingError> {
        Self::open_with(path, busy_timeout, true)
    }

    /// [`MappingDb::open`]; `warn_if_created` says whether creating the file is news (it
    /// is not right after reconcile moved a corrupt one aside).
    fn open_with(
        path: &Path,
        busy_timeout: Duration,
        warn_if_created: bool,
    ) -> Result<Self, MappingError> {
        if prepare_file(path)? && warn_if_created {
            // Expected once, on the first start; any later time the table (and the rows
            // it held) was deleted under us.
            log::warn!(
                "mapping database {} did not exist: created it empty (expected on the first start; \
                 if it held rows, `slurm-one reconcile` rebuilds those of live jobs from the VMs' tags)",
                path.display()
            );
        }
        // No URI parsing: the path is a plain file name.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(path, flags).map_err(|source| MappingError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let db = MappingDb {
            conn,
            path: path.to_path_buf(),
            busy_timeout,
        };
        db.configure()?;
        db.migrate()?;
        log::debug!(
            "mapping database {} open (schema {SCHEMA_VERSION})",
            db.path.display()
        );
        Ok(db)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the whole file with `PRAGMA quick_check`: a header that opens fine can still
    /// hide garbage pages, which only a query touching them would meet. Problems are
    /// reported as [`MappingError::NotADatabase`].
    pub fn check_integrity(&self) -> Result<(), MappingError> {
        let op = Op::QuickCheck;
        let problems: Vec<String> = self
            .conn
            .prepare("PRAGMA quick_check(5)")
            .and_then(|mut stmt| {
                stmt.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .map_err(|e| self.sql_error(&op, e))?;
        if problems.len() == 1 && problems[0] == "ok" {
            return Ok(());
        }
        Err(MappingError::NotADatabase {
            path: self.path.clone(),
            op: Box::new(op),
            reason: problems.join("; "),
            source: None,
        })
    }

    /// For reconcile only (hooks and the other commands use [`MappingDb::open`] and fail
    /// with [`MappingError::NotADatabase`]): opens the database and checks the whole file
    /// ([`MappingDb::check_integrity`]). A file SQLite calls corrupt or not a database is
    /// renamed to `<path>.corrupt-<unix time>`, its `-wal`/`-shm` follow it (a stale WAL
    /// must never meet the new file), the move is logged at error level naming both
    /// paths, and a fresh, empty table is opened in its place, which the caller refills
    /// from the VMs' tags. Recoveries are serialized by an `flock` on
    /// `<path>.recover-lock` (waiting up to `busy_timeout`), and the file is checked again
    /// under it, so a second reconciler never moves the table the first one just made.
    pub fn open_or_set_aside(
        path: &Path,
        busy_timeout: Duration,
    ) -> Result<(MappingDb, Option<SetAside>), MappingError> {
        let open_checked = || {
            let db = MappingDb::open(path, busy_timeout)?;
            db.check_integrity()?;
            Ok::<_, MappingError>(db)
        };
        match open_checked() {
            Err(e) if e.is_corrupt() => log::debug!("{e}; taking the recovery lock"),
            other => return other.map(|db| (db, None)),
        }
        let _lock = recovery_lock(path, busy_timeout)?;
        let reason = match open_checked() {
            // Someone else moved it while we waited for the lock.
            Ok(db) => return Ok((db, None)),
            Err(MappingError::NotADatabase { reason, op, .. }) => format!("{reason}, while {op}"),
            Err(e) => return Err(e),
        };
        let moved_to = set_aside(path)?;
        log::error!(
            "mapping database {} is corrupt or not an SQLite database ({reason}): moved it to {} \
             and started an empty table; reconcile rebuilds the rows of live jobs from the VMs' tags",
            path.display(),
            moved_to.display()
        );
        let db = MappingDb::open_with(path, busy_timeout, false)?;
        db.check_integrity()?;
        Ok((db, Some(SetAside { moved_to, reason })))
    }

    /// Records that a VM is about to be created for (cluster, job, node): a
    /// [`RowState::Creating`] row with no VM id. Fails with
    /// [`MappingError::AlreadyMapped`] if the key already has a row, and with
    /// [`MappingError::RequestTagTaken`] if the tag is in use.
    pub fn insert_creating(
        &self,
        cluster: &str,
        job_id: u32,
        node: &str,
        request_tag: &str,
    ) -> Result<(), MappingError> {
        let op = Op::InsertCreating {
            cluster: cluster.to_owned(),
            job_id,
            node: node.to_owned(),
            request_tag: request_tag.to_owned(),
        };
        self.write(&op, |tx| {
            if let Some(row) = self.find_key(tx, &op, cluster, job_id, node)? {
                return Err(MappingError::AlreadyMapped {
                    path: self.path.clone(),
                    cluster: cluster.to_owned(),
                    job_id,
                    node: node.to_owned(),
                    state: row.state,
                    vm_id: row.vm_id,
                });
            }
            if let Some(row) = self.find_tag(tx, &op, request_tag)? {
                return Err(self.tag_taken(row));
            }
            let t = now();
            tx.execute(
                &format!("INSERT INTO mapping ({COLUMNS}) VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6, ?6, NULL)"),
                params![cluster, job_id, node, RowState::Creating.as_str(), request_tag, t],
            )
            .map_err(|e| self.sql_error(&op, e))?;
            Ok(())
        })?;
        log::info!(
            "mapping: job {job_id} node {node} (cluster {cluster}) creating, request tag {request_tag}"
        );
        Ok(())
    }

    /// Records the VM created for `request_tag` and moves the row to `state`. Recording the
    /// same VM again is fine (a retried create); a different VM is refused with
    /// [`MappingError::VmAlreadySet`], an unknown tag with
    /// [`MappingError::UnknownRequestTag`].
    pub fn set_vm(
        &self,
        request_tag: &str,
        vm_id: u32,
        state: RowState,
    ) -> Result<(), MappingError> {
        let op = Op::SetVm {
            request_tag: request_tag.to_owned(),
            vm_id,
        };
        let row = self.write(&op, |tx| {
            let Some(row) = self.find_tag(tx, &op, request_tag)? else {
                return Err(MappingError::UnknownRequestTag {
                    path: self.path.clone(),
                    request_tag: request_tag.to_owned(),
                    vm_id,
                });
            };
            if let Some(existing) = row.vm_id.filter(|&v| v != vm_id) {
                return Err(MappingError::VmAlreadySet {
                    path: self.path.clone(),
                    request_tag: request_tag.to_owned(),
                    existing,
                    vm_id,
                });
            }
            tx.execute(
                "UPDATE mapping SET vm_id = ?1, state = ?2, updated = ?3 WHERE request_tag = ?4",
                params![vm_id, state.as_str(), now(), request_tag],
            )
            .map_err(|e| self.sql_error(&op, e))?;
            Ok(row)
        })?;
        log::info!(
            "mapping: job {} node {} (cluster {}) VM {vm_id} {} -> {state}",
            row.job_id,
            row.node,
            row.cluster,
            row.state
        );
        Ok(())
    }

    /// Moves (cluster, job, node) to `state`. `detail` replaces the row's detail text;
    /// `None` keeps the current one. Fails with [`MappingError::NoSuchRow`] if there is no
    /// such row.
    pub fn set_state(
        &self,
        cluster: &str,
        job_id: u32,
        node: &str,
        state: RowState,
        detail: Option<&str>,
    ) -> Result<(), MappingError> {
        let op = Op::SetState {
            cluster: cluster.to_owned(),
            job_id,
            node: node.to_owned(),
            state,
        };
        let old = self.write(&op, |tx| {
            let Some(old) = self.find_key(tx, &op, cluster, job_id, node)? else {
                return Err(MappingError::NoSuchRow {
                    path: self.path.clone(),
                    cluster: cluster.to_owned(),
                    job_id,
                    node: node.to_owned(),
                });
            };
            tx.execute(
                "UPDATE mapping SET state = ?1, detail = COALESCE(?2, detail), updated = ?3
                 WHERE cluster = ?4 AND job_id = ?5 AND node = ?6",
                params![state.as_str(), detail, now(), cluster, job_id, node],
            )
            .map_err(|e| self.sql_error(&op, e))?;
            Ok(old)
        })?;
        log::info!(
            "mapping: job {job_id} node {node} (cluster {cluster}) VM {} {} -> {state}{}",
            old.vm_id.map_or_else(|| "-".to_owned(), |v| v.to_string()),
            old.state,
            detail.map(|d| format!(" ({d})")).unwrap_or_default()
        );
        Ok(())
    }

    /// Claims the job's rows for one teardown: in one transaction, every row not already
    /// `tearing_down` (or claimed longer than `reclaim_after` ago, by a teardown that died)
    /// is set `tearing_down` and returned; with `nodes`, only the rows of those nodes. A
    /// concurrent teardown of the same job gets only what is left, so each VM is terminated
    /// by one caller.
    pub fn claim_teardown(
        &self,
        cluster: &str,
        job_id: u32,
        nodes: Option<&[String]>,
        reclaim_after: Duration,
    ) -> Result<Vec<Row>, MappingError> {
        let op = Op::ClaimTeardown {
            cluster: cluster.to_owned(),
            job_id,
        };
        let now = now();
        let before = now.saturating_sub(i64::try_from(reclaim_after.as_secs()).unwrap_or(i64::MAX));
        let claimed = self.write(&op, |tx| {
            let rows: Vec<Row> = self
                .query(
                    tx,
                    &op,
                    &format!(
                        "SELECT {COLUMNS} FROM mapping WHERE cluster = ?1 AND job_id = ?2
                         AND (state != ?3 OR updated <= ?4) ORDER BY node"
                    ),
                    params![cluster, job_id, RowState::TearingDown.as_str(), before],
                )?
                .into_iter()
                .filter(|r| nodes.is_none_or(|only| only.contains(&r.node)))
                .collect();
            for row in &rows {
                tx.execute(
                    "UPDATE mapping SET state = ?4, updated = ?5
                     WHERE cluster = ?1 AND job_id = ?2 AND node = ?3",
                    params![
                        cluster,
                        job_id,
                        row.node,
                        RowState::TearingDown.as_str(),
                        now
                    ],
                )
                .map_err(|e| self.sql_error(&op, e))?;
            }
            Ok(rows)
        })?;
        for row in &claimed {
            log::info!(
                "mapping: job {job_id} node {} (cluster {cluster}) VM {} {} -> {}",
                row.node,
                row.vm_id.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                row.state,
                RowState::TearingDown
            );
        }
        Ok(claimed)
    }

    /// The rows of one job, ordered by node.
    pub fn job_rows(&self, cluster: &str, job_id: u32) -> Result<Vec<Row>, MappingError> {
        let op = Op::JobRows {
            cluster: cluster.to_owned(),
            job_id,
        };
        self.query(
            &self.conn,
            &op,
            &format!(
                "SELECT {COLUMNS} FROM mapping WHERE cluster = ?1 AND job_id = ?2 ORDER BY node"
            ),
            params![cluster, job_id],
        )
    }

    /// Every row of the cluster, ordered by job then node.
    pub fn all_rows(&self, cluster: &str) -> Result<Vec<Row>, MappingError> {
        let op = Op::AllRows {
            cluster: cluster.to_owned(),
        };
        self.query(
            &self.conn,
            &op,
            &format!("SELECT {COLUMNS} FROM mapping WHERE cluster = ?1 ORDER BY job_id, node"),
            params![cluster],
        )
    }

    /// The rows naming a node, newest first. A node normally backs one job at a time; a
    /// second row is left by a job whose VM was never ended (a stale row) or a new job
    /// mapped before the old one's teardown finished.
    pub fn node_rows(&self, cluster: &str, node: &str) -> Result<Vec<Row>, MappingError> {
        let op = Op::NodeRows {
            cluster: cluster.to_owned(),
            node: node.to_owned(),
        };
        self.query(
            &self.conn,
            &op,
            &format!(
                "SELECT {COLUMNS} FROM mapping WHERE cluster = ?1 AND node = ?2
                 ORDER BY created DESC, job_id DESC"
            ),
            params![cluster, node],
        )
    }

    /// The row carrying `request_tag`, if any (a retried create looks its VM up this way).
    pub fn tag_row(&self, request_tag: &str) -> Result<Option<Row>, MappingError> {
        let op = Op::TagRow {
            request_tag: request_tag.to_owned(),
        };
        self.find_tag(&self.conn, &op, request_tag)
    }

    /// Deletes the row of (cluster, job, node); `false` if there was none.
    pub fn delete_row(&self, cluster: &str, job_id: u32, node: &str) -> Result<bool, MappingError> {
        let op = Op::DeleteRow {
            cluster: cluster.to_owned(),
            job_id,
            node: node.to_owned(),
        };
        let n = self.write(&op, |tx| {
            tx.execute(
                "DELETE FROM mapping WHERE cluster = ?1 AND job_id = ?2 AND node = ?3",
                params![cluster, job_id, node],
            )
            .map_err(|e| self.sql_error(&op, e))
        })?;
        if n > 0 {
            log::info!("mapping: job {job_id} node {node} (cluster {cluster}) row deleted");
        }
        Ok(n > 0)
    }

    /// Deletes every row of a job and returns how many there were (0 if already gone).
    pub fn delete_job(&self, cluster: &str, job_id: u32) -> Result<usize, MappingError> {
        let op = Op::DeleteJob {
            cluster: cluster.to_owned(),
            job_id,
        };
        let n = self.write(&op, |tx| {
            tx.execute(
                "DELETE FROM mapping WHERE cluster = ?1 AND job_id = ?2",
                params![cluster, job_id],
            )
            .map_err(|e| self.sql_error(&op, e))
        })?;
        if n > 0 {
            log::info!("mapping: job {job_id} (cluster {cluster}) {n} row(s) deleted");
        }
        Ok(n)
    }

    /// Writes a row rebuilt by reconcile from a VM's tags: inserted if its (cluster, job,
    /// node) is unknown, otherwise its VM id, state, request tag and detail replace the
    /// stored ones. A known VM id is never replaced by `None`, nor a detail by `None`; the
    /// older `created` is kept; `updated` becomes now. A request tag used by a different key
    /// is refused with [`MappingError::RequestTagTaken`].
    pub fn upsert_from_tags(&self, row: &Row) -> Result<(), MappingError> {
        let op = Op::UpsertFromTags {
            cluster: row.cluster.clone(),
            job_id: row.job_id,
            node: row.node.clone(),
            vm_id: row.vm_id,
        };
        let old = self.write(&op, |tx| {
            if let Some(other) = self.find_tag(tx, &op, &row.request_tag)? {
                if (&other.cluster, other.job_id, &other.node)
                    != (&row.cluster, row.job_id, &row.node)
                {
                    return Err(self.tag_taken(other));
                }
            }
            let old = self.find_key(tx, &op, &row.cluster, row.job_id, &row.node)?;
            tx.execute(
                &format!(
                    "INSERT INTO mapping ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (cluster, job_id, node) DO UPDATE SET
                        vm_id = COALESCE(excluded.vm_id, vm_id),
                        state = excluded.state,
                        request_tag = excluded.request_tag,
                        created = MIN(created, excluded.created),
                        updated = excluded.updated,
                        detail = COALESCE(excluded.detail, detail)"
                ),
                params![
                    row.cluster,
                    row.job_id,
                    row.node,
                    row.vm_id,
                    row.state.as_str(),
                    row.request_tag,
                    row.created,
                    now(),
                    row.detail
                ],
            )
            .map_err(|e| self.sql_error(&op, e))?;
            Ok(old)
        })?;
        let vm = row.vm_id.map_or_else(|| "-".to_owned(), |v| v.to_string());
        match old {
            None => log::info!(
                "mapping: job {} node {} (cluster {}) VM {vm} {} rebuilt from tags",
                row.job_id,
                row.node,
                row.cluster,
                row.state
            ),
            Some(old) => {
                if let (Some(a), Some(b)) = (old.vm_id, row.vm_id) {
                    if a != b {
                        log::warn!(
                            "mapping: job {} node {} (cluster {}) VM {a} replaced by VM {b} from tags",
                            row.job_id,
                            row.node,
                            row.cluster
                        );
                    }
                }
                log::info!(
                    "mapping: job {} node {} (cluster {}) VM {vm} {} -> {} from tags",
                    row.job_id,
                    row.node,
                    row.cluster,
                    old.state,
                    row.state
                );
            }
        }
        Ok(())
    }

    /// Busy timeout, synchronous mode and the WAL journal.
    fn configure(&self) -> Result<(), MappingError> {
        let op = Op::Configure;
        // SQLite's own handler normally waits only for a process outside slurm-one:
        // slurm-one's writers have queued for their turn (`writers_turn`) before they take
        // its lock (after a hole in the queue it also waits for the writer ahead).
        self.conn
            .busy_timeout(self.busy_timeout)
            .map_err(|e| self.sql_error(&op, e))?;
        // FULL: a committed mapping survives power loss; losing one would orphan a VM.
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.sql_error(&op, e))?;
        // WAL is persistent, so the switch happens once per file. Switching needs an
        // exclusive lock and SQLite may report BUSY without calling the busy handler when
        // several fresh processes race for it, so retry here until the busy timeout.
        let deadline = Instant::now() + self.busy_timeout;
        loop {
            let mode = self
                .conn
                .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
                .and_then(|mode| {
                    if mode.eq_ignore_ascii_case("wal") {
                        Ok(mode)
                    } else {
                        self.conn
                            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
                    }
                });
            match mode {
                Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
                Ok(mode) => {
                    return Err(MappingError::BadValue {
                        path: self.path.clone(),
                        op: Box::new(op),
                        column: "journal_mode",
                        value: mode,
                    })
                }
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    thread::sleep(JOURNAL_MODE_RETRY)
                }
                Err(e) => return Err(self.sql_error(&op, e)),
            }
        }
    }

    /// Applies pending migrations, each in its own `BEGIN IMMEDIATE` transaction that
    /// re-reads the version, so concurrent openers apply each one exactly once.
    fn migrate(&self) -> Result<(), MappingError> {
        // Cheap check without the write lock: the common case is an up-to-date file.
        if self.schema_version(&self.conn)? == i64::from(SCHEMA_VERSION) {
            return Ok(());
        }
        for (version, sql) in (1u32..).zip(MIGRATIONS) {
            let op = Op::Migrate { version };
            let applied = self.write(&op, |tx| {
                let current = self.schema_version(tx)?;
                if current >= i64::from(version) {
                    return Ok(false);
                }
                tx.execute_batch(sql).map_err(|e| self.sql_error(&op, e))?;
                tx.pragma_update(None, "user_version", version)
                    .map_err(|e| self.sql_error(&op, e))?;
                Ok(true)
            })?;
            if applied {
                log::info!(
                    "mapping database {}: schema migration {version} applied",
                    self.path.display()
                );
            }
        }
        Ok(())
    }

    /// Reads `user_version`, refusing a schema newer than this build.
    fn schema_version(&self, conn: &Connection) -> Result<i64, MappingError> {
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.sql_error(&Op::ReadSchemaVersion, e))?;
        if version > i64::from(SCHEMA_VERSION) {
            return Err(MappingError::SchemaTooNew {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(version)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction, committing only if it succeeds.
    fn write<T>(
        &self,
        op: &Op,
        f: impl FnOnce(&Connection) -> Result<T, MappingError>,
    ) -> Result<T, MappingError> {
        // Writers queue in ticket order first; SQLite's lock is then normally free, and its
        // busy timeout only waits for a process outside slurm-one (an `sqlite3` shell) or,
        // after a hole in the queue, for the writer ahead.
        let Some(_turn) = writers_turn(&self.path, self.busy_timeout)? else {
            return Err(MappingError::Busy {
                path: self.path.clone(),
                op: Box::new(op.clone()),
                timeout: self.busy_timeout,
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                    Some(format!(
                        "slurm-one writers queued ahead on {} kept their turns throughout",
                        with_suffix(&self.path, QUEUE_SUFFIX).display()
                    )),
                ),
            });
        };
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| self.sql_error(op, e))?;
        // On error `tx` is dropped, which rolls back.
        let out = f(&tx)?;
        tx.commit().map_err(|e| self.sql_error(op, e))?;
        Ok(out)
    }

    fn find_key(
        &self,
        conn: &Connection,
        op: &Op,
        cluster: &str,
        job_id: u32,
        node: &str,
    ) -> Result<Option<Row>, MappingError> {
        let rows = self.query(
            conn,
            op,
            &format!(
                "SELECT {COLUMNS} FROM mapping WHERE cluster = ?1 AND job_id = ?2 AND node = ?3"
            ),
            params![cluster, job_id, node],
        )?;
        Ok(rows.into_iter().next())
    }

    fn find_tag(
        &self,
        conn: &Connection,
        op: &Op,
        request_tag: &str,
    ) -> Result<Option<Row>, MappingError> {
        let raw = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM mapping WHERE request_tag = ?1"),
                params![request_tag],
                RawRow::read,
            )
            .optional()
            .map_err(|e| self.sql_error(op, e))?;
        raw.map(|r| self.decode(op, r)).transpose()
    }

    fn query(
        &self,
        conn: &Connection,
        op: &Op,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Row>, MappingError> {
        let mut stmt = conn
            .prepare_cached(sql)
            .map_err(|e| self.sql_error(op, e))?;
        let raws = stmt
            .query_map(params, RawRow::read)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<RawRow>>>())
            .map_err(|e| self.sql_error(op, e))?;
        raws.into_iter().map(|r| self.decode(op, r)).collect()
    }

    fn decode(&self, op: &Op, r: RawRow) -> Result<Row, MappingError> {
        let bad = |column: &'static str, value: String| MappingError::BadValue {
            path: self.path.clone(),
            op: Box::new(op.clone()),
            column,
            value,
        };
        let job_id = u32::try_from(r.job_id).map_err(|_| bad("job_id", r.job_id.to_string()))?;
        let vm_id = match r.vm_id {
            None => None,
            Some(v) => Some(u32::try_from(v).map_err(|_| bad("vm_id", v.to_string()))?),
        };
        let state = RowState::from_db(&r.state).ok_or_else(|| bad("state", r.state.clone()))?;
        Ok(Row {
            cluster: r.cluster,
            job_id,
            node: r.node,
            vm_id,
            state,
            request_tag: r.request_tag,
            created: r.created,
            updated: r.updated,
            detail: r.detail,
        })
    }

    fn tag_taken(&self, holder: Row) -> MappingError {
        MappingError::RequestTagTaken {
            path: self.path.clone(),
            request_tag: holder.request_tag,
            cluster: holder.cluster,
            job_id: holder.job_id,
            node: holder.node,
        }
    }

    /// Classifies an SQLite error: busy/locked and not-a-database get their own variants.
    fn sql_error(&self, op: &Op, source: rusqlite::Error) -> MappingError {
        let path = self.path.clone();
        let op = Box::new(op.clone());
        match source.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => MappingError::Busy {
                path,
                op,
                timeout: self.busy_timeout,
                source,
            },
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                MappingError::NotADatabase {
                    path,
                    op,
                    reason: sqlite_message(&source),
                    source: Some(source),
                }
            }
            _ => MappingError::Statement { path, op, source },
        }
    }
}

/// Creates the directory (0700) and the file (0600) if missing, and restricts an existing
/// file that group or others can access. SQLite gives its `-wal` and `-shm` files the
/// database file's mode, so they follow. True when it created the file.
fn prepare_file(path: &Path) -> Result<bool, MappingError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| MappingError::CreateDir {
                    dir: dir.to_path_buf(),
                    source,
                })?;
        }
    }
    let create_err = |source| MappingError::CreateFile {
        path: path.to_path_buf(),
        source,
    };
    // An existing file (even a corrupt one) is opened as it is, never truncated. Creating
    // and opening are tried in turn, a few times, in case another process deletes or
    // creates the file in between.
    let mut attempt = 0;
    let (file, created) = loop {
        attempt += 1;
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(f) => break (f, true),
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(create_err(e)),
            Err(_) => {}
        }
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => break (f, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 3 => {}
            Err(e) => return Err(create_err(e)),
        }
    };
    let mode = file.metadata().map_err(create_err)?.permissions().mode();
    if mode & 0o077 != 0 {
        log::warn!(
            "mapping database {} had mode {:o}; restricting to 0600",
            path.display(),
            mode & 0o7777
        );
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
            MappingError::RestrictMode {
                path: path.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    const CLUSTER: &str = "c1";
    /// Env var carrying `<db path>|<first job>|<job count>` to a worker process.
    const WORKER_ENV: &str = "SLURM_ONE_MAPPING_TEST_WORKER";
    const WORKERS: u32 = 32;
    const JOBS_PER_WORKER: u32 = 6;

    fn open(path: &Path) -> MappingDb {
        MappingDb::open(path, DEFAULT_BUSY_TIMEOUT).expect("open mapping db")
    }

    fn temp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join("mapping.db");
        (dir, path)
    }

    fn user_version(path: &Path) -> i64 {
        let c = Connection::open(path).expect("raw open");
        c.pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version")
    }

    #[test]
    fn open_sets_user_version_and_wal() {
        let (_d, path) = temp();
        let db = open(&path);
        assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
        let mode: String = db
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn schema_version_counts_the_migrations() {
        assert_eq!(u32::try_from(MIGRATIONS.len()), Ok(SCHEMA_VERSION));
    }

    #[test]
    fn migrations_are_idempotent_on_reopen() {
        let (_d, path) = temp();
        {
            let db = open(&path);
            db.insert_creating(CLUSTER, 1, "n1", "t1").expect("insert");
        }
        for _ in 0..3 {
            let db = open(&path);
            assert_eq!(db.all_rows(CLUSTER).expect("rows").len(), 1);
        }
        assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
    }

    #[test]
    fn newer_schema_is_refused() {
        let (_d, path) = temp();
        drop(open(&path));
        Connection::open(&path)
            .expect("raw open")
            .pragma_update(None, "user_version", 99)
            .expect("bump");
        let err = MappingDb::open(&path, DEFAULT_BUSY_TIMEOUT).expect_err("must refuse");
        assert!(
            matches!(err, MappingError::SchemaTooNew { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn insert_set_vm_set_state_query_delete_round_trip() {
        let (_d, path) = temp();
        let db = open(&path);
        db.insert_creating(CLUSTER, 7, "n1", "tag-7-n1")
            .expect("insert n1");
        db.insert_creating(CLUSTER, 7, "n2", "tag-7-n2")
            .expect("insert n2");
        db.insert_creating("other", 7, "n1", "tag-o-7-n1")
            .expect("other cluster");

        let rows = db.job_rows(CLUSTER, 7).expect("job rows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].state, RowState::Creating);
        assert_eq!(rows[0].vm_id, None);
        assert!(rows[0].created > 0 && rows[0].updated == rows[0].created);

        db.set_vm("tag-7-n1", 42, RowState::Booting)
            .expect("set_vm");
        // A retried create recording the same VM is fine.
        db.set_vm("tag-7-n1", 42, RowState::Booting)
            .expect("set_vm again");
        let err = db
            .set_vm("tag-7-n1", 43, RowState::Booting)
            .expect_err("other vm");
        assert!(matches!(
            err,
            MappingError::VmAlreadySet {
                existing: 42,
                vm_id: 43,
                ..
            }
        ));
        let err = db
            .set_vm("nope", 1, RowState::Booting)
            .expect_err("unknown tag");
        assert!(matches!(err, MappingError::UnknownRequestTag { .. }));

        db.set_state(CLUSTER, 7, "n1", RowState::Running, Some("host h1"))
            .expect("set_state");
        db.set_state(CLUSTER, 7, "n1", RowState::Suspended, None)
            .expect("set_state keeps detail");
        let err = db
            .set_state(CLUSTER, 8, "n1", RowState::Running, None)
            .expect_err("no row");
        assert!(matches!(err, MappingError::NoSuchRow { job_id: 8, .. }));

        let rows = db.node_rows(CLUSTER, "n1").expect("node_rows");
        assert_eq!(rows.len(), 1);
        let row = rows.into_iter().next().expect("one");
        assert_eq!(row.vm_id, Some(42));
        assert_eq!(row.state, RowState::Suspended);
        assert_eq!(row.detail.as_deref(), Some("host h1"));
        assert_eq!(db.tag_row("tag-7-n1").expect("tag_row"), Some(row));
        assert_eq!(db.node_rows(CLUSTER, "n9").expect("node_rows"), []);
        assert_eq!(db.all_rows(CLUSTER).expect("all").len(), 2);

        assert!(db.delete_row(CLUSTER, 7, "n1").expect("delete"));
        assert!(!db.delete_row(CLUSTER, 7, "n1").expect("delete again"));
        assert_eq!(db.job_rows(CLUSTER, 7).expect("rows").len(), 1);
        assert_eq!(db.all_rows("other").expect("other").len(), 1);
    }

    #[test]
    fn duplicate_mapping_is_refused() {
        let (_d, path) = temp();
        let db = open(&path);
        db.insert_creating(CLUSTER, 1, "n1", "t1").expect("insert");
        db.set_vm("t1", 5, RowState::Running).expect("set_vm");
        let err = db
            .insert_creating(CLUSTER, 1, "n1", "t2")
            .expect_err("dup key");
        assert!(
            matches!(
                &err,
                MappingError::AlreadyMapped { job_id: 1, node, state: RowState::Running, vm_id: Some(5), .. } if node == "n1"
            ),
            "{err}"
        );
        let err = db
            .insert_creating(CLUSTER, 2, "n1", "t1")
            .expect_err("dup tag");
        assert!(
            matches!(&err, MappingError::RequestTagTaken { job_id: 1, .. }),
            "{err}"
        );
        assert_eq!(db.all_rows(CLUSTER).expect("rows").len(), 1);
    }

    #[test]
    fn delete_job_is_idempotent() {
        let (_d, path) = temp();
        let db = open(&path);
        for node in ["n1", "n2", "n3"] {
            db.insert_creating(CLUSTER, 3, node, &format!("t-{node}"))
                .expect("insert");
        }
        db.insert_creating(CLUSTER, 4, "n1", "t-4")
            .expect("insert job 4");
        assert_eq!(db.delete_job(CLUSTER, 3).expect("delete"), 3);
        assert_eq!(db.delete_job(CLUSTER, 3).expect("delete again"), 0);
        assert_eq!(db.all_rows(CLUSTER).expect("rows").len(), 1);
    }

    #[test]
    fn upsert_from_tags_inserts_then_updates_and_guards_tags() {
        let (_d, path) = temp();
        let db = open(&path);
        let mut row = Row {
            cluster: CLUSTER.into(),
            job_id: 9,
            node: "n1".into(),
            vm_id: Some(77),
            state: RowState::Running,
            request_tag: "t9".into(),
            created: 1000,
            updated: 1000,
            detail: Some("host h2".into()),
        };
        db.upsert_from_tags(&row).expect("insert");
        row.state = RowState::TearingDown;
        row.created = 2000;
        row.detail = None;
        db.upsert_from_tags(&row).expect("update");
        let got = db.node_rows(CLUSTER, "n1").expect("read").remove(0);
        assert_eq!(got.state, RowState::TearingDown);
        assert_eq!(got.created, 1000);
        assert_eq!(got.vm_id, Some(77));
        assert_eq!(got.detail.as_deref(), Some("host h2"));

        row.node = "n2".into();
        let err = db.upsert_from_tags(&row).expect_err("tag of another key");
        assert!(matches!(err, MappingError::RequestTagTaken { .. }), "{err}");
    }

    #[test]
    fn corrupt_file_gives_an_error_naming_the_path() {
        let (_d, path) = temp();
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(&path, garbage).expect("write garbage");
        let err = MappingDb::open(&path, DEFAULT_BUSY_TIMEOUT).expect_err("garbage");
        assert!(matches!(err, MappingError::NotADatabase { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );

        assert!(err.is_corrupt());
        let msg = err.to_string();
        assert!(
            msg.contains("is corrupt or not an SQLite database")
                && msg.contains("file is not a database")
                && msg.contains("slurm-one reconcile"),
            "{msg}"
        );
        // Opening never moves or rewrites the file: only reconcile does.
        assert_eq!(fs::read(&path).expect("read back"), garbage_bytes());

        fs::write(&path, b"not sqlite").expect("write short garbage");
        let err = MappingDb::open(&path, DEFAULT_BUSY_TIMEOUT).expect_err("short garbage");
        assert!(matches!(err, MappingError::NotADatabase { .. }), "{err:?}");
        assert_eq!(fs::read(&path).expect("read back"), b"not sqlite");
    }

    /// 4 KiB that SQLite cannot take for a database.
    fn garbage_bytes() -> Vec<u8> {
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    /// A table holding job 1 (rows on n0..n49, enough for several pages), closed.
    fn table_with_rows(path: &Path) {
        let db = open(path);
        for n in 0..50 {
            db.insert_creating(
                CLUSTER,
                1,
                &format!("n{n}"),
                &format!("tag-{n}-{}", "x".repeat(200)),
            )
            .expect("insert");
        }
    }

    /// The `<name>.corrupt-*` files beside `path`.
    fn set_aside_files(path: &Path) -> Vec<PathBuf> {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let mut v: Vec<PathBuf> = fs::read_dir(path.parent().expect("parent"))
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}.corrupt-")))
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn garbage_behind_a_valid_header_is_found_by_the_integrity_check() {
        let (_d, path) = temp();
        table_with_rows(&path);
        let mut bytes = fs::read(&path).expect("read");
        assert!(bytes.len() > 3 * 4096, "{} bytes", bytes.len());
        // Page 1 (header and schema) stays; every later page becomes garbage.
        let garbage = garbage_bytes();
        for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
            *b = garbage[i % garbage.len()];
        }
        fs::write(&path, &bytes).expect("write");
        // The header and schema read fine, so opening succeeds...
        let db = MappingDb::open(&path, DEFAULT_BUSY_TIMEOUT).expect("page 1 is intact");
        // ...and only a look at the other pages shows the damage.
        let err = db.check_integrity().expect_err("garbage pages");
        assert!(
            matches!(&err, MappingError::NotADatabase { op, .. } if **op == Op::QuickCheck),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        drop(db);
        let (_db, set_aside) =
            MappingDb::open_or_set_aside(&path, DEFAULT_BUSY_TIMEOUT).expect("recovers");
        assert!(set_aside.is_some());
    }

    #[test]
    fn reconcile_moves_a_corrupt_file_aside_and_the_new_table_works() {
        let (_d, path) = temp();
        table_with_rows(&path);
        fs::write(&path, garbage_bytes()).expect("garbage over the table");
        // A stale WAL and shared-memory file must go with it, never meet the new file.
        fs::write(with_suffix(&path, "-wal"), b"stale wal").expect("wal");
        fs::write(with_suffix(&path, "-shm"), b"stale shm").expect("shm");

        let (db, set_aside) =
            MappingDb::open_or_set_aside(&path, DEFAULT_BUSY_TIMEOUT).expect("recovers");
        let set_aside = set_aside.expect("the file was moved");
        assert_eq!(set_aside_files(&path), vec![set_aside.moved_to.clone()]);
        let moved = set_aside.moved_to.to_string_lossy().into_owned();
        let stamp = moved
            .strip_prefix(&format!("{}.corrupt-", path.display()))
            .expect("named <db>.corrupt-<time>");
        assert!(stamp.parse::<i64>().is_ok_and(|t| t > 0), "{moved}");
        assert!(
            set_aside.reason.contains("file is not a database"),
            "{}",
            set_aside.reason
        );
        assert_eq!(
            fs::read(&set_aside.moved_to).expect("kept"),
            garbage_bytes()
        );
        // (SQLite itself may already have dropped an invalid WAL when the failed open
        // closed; what must never happen is the stale files staying beside the new table.)
        for suffix in ["-wal", "-shm"] {
            let stale = fs::read(with_suffix(&path, suffix)).unwrap_or_default();
            assert!(
                !stale.starts_with(b"stale"),
                "{suffix} left beside the new table"
            );
        }

        // A fresh, working table in its place, for every opener.
        assert!(db.all_rows(CLUSTER).expect("rows").is_empty());
        db.insert_creating(CLUSTER, 2, "n1", "t2").expect("insert");
        db.set_vm("t2", 9, RowState::Running).expect("set_vm");
        drop(db);
        let again = open(&path);
        again.check_integrity().expect("healthy");
        assert_eq!(again.job_rows(CLUSTER, 2).expect("rows")[0].vm_id, Some(9));
        assert_eq!(user_version(&path), i64::from(SCHEMA_VERSION));
        assert_eq!(mode_of(&path), 0o600);

        // Corrupt again: a second file is set aside, the first is kept.
        drop(again);
        fs::write(&path, b"garbage again").expect("garbage");
        let (_db, second) =
            MappingDb::open_or_set_aside(&path, DEFAULT_BUSY_TIMEOUT).expect("recovers again");
        let second = second.expect("moved again");
        assert_ne!(second.moved_to, set_aside.moved_to);
        assert_eq!(set_aside_files(&path).len(), 2);
    }

    #[test]
    fn set_aside_takes_the_journal_files_along() {
        let (_d, path) = temp();
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, b"main").expect("main");
        fs::write(with_suffix(&path, "-wal"), b"wal").expect("wal");
        fs::write(with_suffix(&path, "-shm"), b"shm").expect("shm");
        let to = set_aside(&path).expect("moved");
        assert_eq!(fs::read(&to).expect("main moved"), b"main");
        assert_eq!(
            fs::read(with_suffix(&to, "-wal")).expect("wal moved"),
            b"wal"
        );
        assert_eq!(
            fs::read(with_suffix(&to, "-shm")).expect("shm moved"),
            b"shm"
        );
        assert!(!with_suffix(&to, "-journal").exists());
        for suffix in ["", "-wal", "-shm"] {
            assert!(!with_suffix(&path, suffix).exists(), "{suffix} still there");
        }
        // The same second again: a new name, nothing overwritten.
        fs::write(&path, b"main 2").expect("main 2");
        let to2 = set_aside(&path).expect("moved again");
        assert_ne!(to, to2);
        assert_eq!(fs::read(&to).expect("first kept"), b"main");
        assert_eq!(fs::read(&to2).expect("second"), b"main 2");
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn reconcile_leaves_a_healthy_or_missing_file_alone() {
        let (_d, path) = temp();
        table_with_rows(&path);
        let (db, set_aside) =
            MappingDb::open_or_set_aside(&path, DEFAULT_BUSY_TIMEOUT).expect("opens");
        assert_eq!(set_aside, None);
        assert_eq!(db.job_rows(CLUSTER, 1).expect("rows").len(), 50);
        drop(db);
        fs::remove_file(&path).expect("delete the table");
        let (db, set_aside) =
            MappingDb::open_or_set_aside(&path, DEFAULT_BUSY_TIMEOUT).expect("recreates");
        assert_eq!(set_aside, None);
        assert!(db.all_rows(CLUSTER).expect("rows").is_empty());
        assert!(set_aside_files(&path).is_empty());
    }

    #[test]
    fn a_held_recovery_lock_makes_reconcile_wait_then_recheck() {
        let (_d, path) = temp();
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, garbage_bytes()).expect("garbage");

        // Another reconciler is recovering: a short wait gives up, nothing is moved.
        let held = recovery_lock(&path, DEFAULT_BUSY_TIMEOUT).expect("lock");
        let err =
            MappingDb::open_or_set_aside(&path, Duration::from_millis(200)).expect_err("lock held");
        assert!(
            matches!(&err, MappingError::RecoveryLocked { source: None, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(".recover-lock"), "{err}");
        assert!(set_aside_files(&path).is_empty());

        // A patient one waits; meanwhile the holder replaces the file with a good table
        // holding a row. Under the lock the waiter finds it healthy and moves nothing.
        let waiter = {
            let path = path.clone();
            thread::spawn(move || MappingDb::open_or_set_aside(&path, Duration::from_secs(20)))
        };
        thread::sleep(Duration::from_millis(300));
        fs::remove_file(&path).expect("holder removes the garbage");
        open(&path)
            .insert_creating(CLUSTER, 5, "n1", "t5")
            .expect("holder's fresh table");
        drop(held);
        let (db, set_aside) = waiter.join().expect("waiter").expect("opens");
        assert_eq!(set_aside, None);
        assert_eq!(db.job_rows(CLUSTER, 5).expect("rows").len(), 1);
        assert!(set_aside_files(&path).is_empty());
    }

    #[test]
    fn file_is_0600_and_new_directory_is_0700() {
        let (_d, path) = temp();
        let db = open(&path);
        db.insert_creating(CLUSTER, 1, "n1", "t1").expect("insert");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("parent")), 0o700);
        let wal = path.with_extension("db-wal");
        assert_eq!(mode(&wal), 0o600);
        assert_eq!(mode(&with_suffix(&path, QUEUE_SUFFIX)), 0o600);

        // An existing file readable by others is restricted.
        drop(db);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        drop(open(&path));
        assert_eq!(mode(&path), 0o600);
    }

    /// Holds `BEGIN EXCLUSIVE` on `path` from another connection for `hold`; returns once
    /// the lock is taken.
    fn hold_exclusive(path: &Path, hold: Duration) -> thread::JoinHandle<()> {
        let path = path.to_path_buf();
        let (tx, rx) = mpsc::channel();
        let h = thread::spawn(move || {
            let c = Connection::open(&path).expect("raw open");
            c.execute_batch("BEGIN EXCLUSIVE").expect("begin exclusive");
            tx.send(()).expect("signal");
            thread::sleep(hold);
            c.execute_batch("COMMIT").expect("commit");
        });
        rx.recv().expect("lock taken");
        h
    }

    /// The call that started at `t` waited at least `ms` milliseconds (for a lock).
    fn waited_at_least(t: Instant, ms: u64) {
        assert!(
            t.elapsed() >= Duration::from_millis(ms),
            "{:?}",
            t.elapsed()
        );
    }

    /// Holds a writer's turn (another writer's) for `hold` on a thread; returns once it is
    /// taken.
    fn hold_writers_turn(path: &Path, hold: Duration) -> thread::JoinHandle<()> {
        let path = path.to_path_buf();
        let (tx, rx) = mpsc::channel();
        let h = thread::spawn(move || {
            let turn = writers_turn(&path, Duration::from_secs(10))
                .expect("queue")
                .expect("turn");
            tx.send(()).expect("signal");
            thread::sleep(hold);
            drop(turn);
        });
        rx.recv().expect("turn taken");
        h
    }

    /// The lock of `byte` of the queue file (`None`: to its end) as seen from a new open
    /// file description: whether anyone holds it.
    fn queue_byte_held(path: &Path, byte: i64, len: Option<i64>) -> bool {
        use std::os::unix::io::AsRawFd;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(with_suffix(path, QUEUE_SUFFIX))
            .expect("open the queue file");
        // SAFETY: all zeroes is a valid `struct flock`.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = byte;
        fl.l_len = len.unwrap_or(0);
        // SAFETY: valid fd and struct.
        assert_eq!(
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) },
            0
        );
        fl.l_type != libc::F_UNLCK as libc::c_short
    }

    /// Inserts job `job`'s row on node n1 on a new thread; the thread returns when it wrote.
    fn insert_on_a_thread(path: &Path, job: u32, tag: &'static str) -> thread::JoinHandle<Instant> {
        let path = path.to_path_buf();
        thread::spawn(move || {
            open(&path)
                .insert_creating(CLUSTER, job, "n1", tag)
                .expect("writes");
            Instant::now()
        })
    }

    /// Takes a writer's turn on a new thread; the thread returns its ticket and when it got
    /// the turn (released as the thread ends).
    fn turn_on_a_thread(path: &Path) -> thread::JoinHandle<(u64, Instant)> {
        let path = path.to_path_buf();
        thread::spawn(move || {
            let turn = writers_turn(&path, Duration::from_secs(10))
                .expect("queue")
                .expect("turn");
            (turn.ticket, Instant::now())
        })
    }

    /// A new table, and the turn of a writer at work on it (held until dropped).
    fn table_with_a_writer_at_work() -> (tempfile::TempDir, PathBuf, WritersTurn) {
        let (dir, path) = temp();
        drop(open(&path));
        let holder = writers_turn(&path, Duration::from_secs(10))
            .expect("queue")
            .expect("turn");
        (dir, path, holder)
    }

    /// Some writer holds ticket `t` (it has queued, or has its turn).
    fn ticket_held(path: &Path, t: u64) -> bool {
        queue_byte_held(path, ticket_byte(t), Some(1))
    }

    /// Waits (polling: a test only) until `cond` holds, failing after 10 s.
    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let t = Instant::now();
        while !cond() {
            assert!(t.elapsed() < Duration::from_secs(10), "never: {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// The queue file's text: the next ticket number.
    fn next_ticket(path: &Path) -> String {
        fs::read_to_string(with_suffix(path, QUEUE_SUFFIX)).expect("read the queue file")
    }

    /// The call that started at `t` gave up about `ms` milliseconds later: not before, and
    /// not much after (slack for a busy machine).
    fn gave_up_after(t: Instant, ms: u64) {
        waited_at_least(t, ms);
        assert!(
            t.elapsed() < Duration::from_millis(ms + 1000),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn a_writer_waits_for_its_turn_and_gives_up_at_the_busy_timeout() {
        let (_d, path) = temp();
        // Created before the other writer takes its turn (the directory must exist).
        let db = MappingDb::open(&path, Duration::from_millis(300)).expect("open");
        let h = hold_writers_turn(&path, Duration::from_millis(100));
        let t = Instant::now();
        db.insert_creating(CLUSTER, 1, "n1", "t1")
            .expect("waits for the turn, then writes");
        waited_at_least(t, 90);
        h.join().expect("holder");

        let h = hold_writers_turn(&path, Duration::from_secs(1));
        let t = Instant::now();
        let err = db
            .insert_creating(CLUSTER, 2, "n1", "t2")
            .expect_err("turn held past the busy timeout");
        gave_up_after(t, 300);
        let msg = err.to_string();
        assert!(
            matches!(&err, MappingError::Busy { op, .. } if matches!(**op, Op::InsertCreating { job_id: 2, .. }))
                && msg.contains("busy/locked")
                && msg.contains(&path.display().to_string()),
            "{msg}"
        );
        h.join().expect("holder");
        // The writer that gave up left no lock behind: the next write goes at once.
        let t = Instant::now();
        db.insert_creating(CLUSTER, 2, "n1", "t2")
            .expect("write after the holder let go");
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(db.all_rows(CLUSTER).expect("rows").len(), 2);
    }

    #[test]
    fn writers_get_their_turns_in_arrival_order() {
        const WRITERS: usize = 8;
        let (_d, path, holder) = table_with_a_writer_at_work();
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..WRITERS)
            .map(|i| {
                let (p, order) = (path.clone(), order.clone());
                let h = thread::spawn(move || {
                    let turn = writers_turn(&p, Duration::from_secs(10))
                        .expect("queue")
                        .expect("turn");
                    order.lock().expect("order").push(i);
                    // Long enough for a writer that jumped the queue to show.
                    thread::sleep(Duration::from_millis(5));
                    drop(turn);
                });
                // The next one starts only once this one has its ticket.
                let ticket = holder.ticket + 1 + i as u64;
                wait_until(&format!("writer {i} queued"), || ticket_held(&path, ticket));
                h
            })
            .collect();
        thread::sleep(Duration::from_millis(20));
        assert!(
            order.lock().expect("order").is_empty(),
            "went before the holder"
        );
        drop(holder);
        for h in threads {
            h.join().expect("writer");
        }
        assert_eq!(
            *order.lock().expect("order"),
            (0..WRITERS).collect::<Vec<_>>()
        );
        // Nothing is left locked.
        assert!(!queue_byte_held(&path, 0, None));
    }

    #[test]
    fn a_writer_that_gives_up_lets_the_next_one_go() {
        let (_d, path, holder) = table_with_a_writer_at_work();
        let impatient = {
            let path = path.clone();
            thread::spawn(move || {
                let db = MappingDb::open(&path, Duration::from_millis(200)).expect("open");
                let t = Instant::now();
                let err = db
                    .insert_creating(CLUSTER, 1, "n1", "t1")
                    .expect_err("gives up");
                gave_up_after(t, 200);
                assert!(matches!(err, MappingError::Busy { .. }), "{err:?}");
                Instant::now()
            })
        };
        wait_until("the impatient writer queued", || {
            ticket_held(&path, holder.ticket + 1)
        });
        let patient = insert_on_a_thread(&path, 2, "t2");
        wait_until("the patient writer queued", || {
            ticket_held(&path, holder.ticket + 2)
        });
        let gave_up = impatient.join().expect("impatient writer");
        // The hole costs order, not time: the writer behind goes on at once, before the
        // holder is done (the queue only orders; SQLite's lock keeps the writes apart).
        let wrote = patient.join().expect("patient writer");
        assert!(
            wrote.duration_since(gave_up) < Duration::from_millis(500),
            "{:?}",
            wrote.duration_since(gave_up)
        );
        drop(holder);
        let rows = open(&path).all_rows(CLUSTER).expect("rows");
        assert_eq!(rows.iter().map(|r| r.job_id).collect::<Vec<_>>(), [2]);
    }

    /// Env var carrying the database path to `queue_worker_process`.
    const QUEUE_WORKER_ENV: &str = "SLURM_ONE_MAPPING_TEST_QUEUE_WORKER";
    /// What `queue_worker_process` prints, followed by its ticket, once it has its turn.
    const QUEUE_WORKER_TURN: &str = "queue worker's turn: ticket ";

    /// Worker half of the tests of writers killed in the queue: runs only in a child process
    /// (`spawn_queue_worker`); takes a turn, says so, and keeps it until killed.
    #[test]
    fn queue_worker_process() {
        use std::io::Write;
        let Ok(path) = std::env::var(QUEUE_WORKER_ENV) else {
            return;
        };
        let turn = writers_turn(Path::new(&path), Duration::from_secs(60))
            .expect("queue")
            .expect("turn");
        println!("{QUEUE_WORKER_TURN}{}", turn.ticket);
        std::io::stdout().flush().expect("flush");
        thread::sleep(Duration::from_secs(60));
    }

    /// A child process queueing for a turn on `path`; killed (SIGKILL) when dropped.
    struct QueueWorker(std::process::Child);

    impl Drop for QueueWorker {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn spawn_queue_worker(path: &Path) -> QueueWorker {
        let module = module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_, m)| m);
        let worker = format!("{module}::queue_worker_process");
        let child = Command::new(std::env::current_exe().expect("current_exe"))
            .args(["--exact", &worker, "--nocapture", "--test-threads=1"])
            .env(QUEUE_WORKER_ENV, path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the queue worker");
        QueueWorker(child)
    }

    /// Kills the worker with SIGKILL and reaps it.
    fn kill(worker: &mut QueueWorker) {
        worker.0.kill().expect("SIGKILL");
        worker.0.wait().expect("reap");
    }

    #[test]
    fn a_writer_killed_holding_its_turn_stalls_nobody() {
        use std::io::BufRead;
        let (_d, path) = temp();
        let db = open(&path);
        let mut worker = spawn_queue_worker(&path);
        // The test harness prints the test's name on the same line first.
        let ticket: u64 = std::io::BufReader::new(worker.0.stdout.take().expect("stdout"))
            .lines()
            .map(|l| l.expect("worker output"))
            .find_map(|l| Some(l.split_once(QUEUE_WORKER_TURN)?.1.parse().expect("ticket")))
            .expect("the worker took its turn");
        let waiter = insert_on_a_thread(&path, 1, "t1");
        wait_until("the writer queued", || ticket_held(&path, ticket + 1));
        thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "went before the holder");
        let killed = Instant::now();
        kill(&mut worker);
        let wrote = waiter.join().expect("writer");
        // Only the kernel's release stood between the two (the busy timeout is 10 s).
        assert!(
            wrote.duration_since(killed) < Duration::from_millis(500),
            "{:?}",
            wrote.duration_since(killed)
        );
        assert_eq!(db.job_rows(CLUSTER, 1).expect("rows").len(), 1);
        // Nothing is left locked, and the dead writer's ticket is spent.
        assert!(!queue_byte_held(&path, 0, None));
        assert_eq!(next_ticket(&path), format!("{:020}\n", ticket + 2));
    }

    #[test]
    fn a_writer_killed_while_queued_stalls_nobody() {
        let (_d, path, holder) = table_with_a_writer_at_work();
        let mut worker = spawn_queue_worker(&path);
        wait_until("the worker queued", || {
            ticket_held(&path, holder.ticket + 1)
        });
        let waiter = turn_on_a_thread(&path);
        wait_until("the writer queued", || {
            ticket_held(&path, holder.ticket + 2)
        });
        thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "went before the worker");
        let killed = Instant::now();
        kill(&mut worker);
        // The dead writer's hole costs order only: the one behind it goes on at once
        // (before the holder is done; SQLite's lock keeps their writes apart).
        let (ticket, got) = waiter.join().expect("writer");
        assert_eq!(ticket, holder.ticket + 2);
        assert!(
            got.duration_since(killed) < Duration::from_millis(500),
            "{:?}",
            got.duration_since(killed)
        );
        drop(holder);
        assert!(!queue_byte_held(&path, 0, None));
    }

    #[test]
    fn the_queue_leaves_nothing_behind() {
        let (_d, path) = temp();
        // Created (one write: the schema migration) before the writers open it.
        drop(open(&path));
        let writers: Vec<_> = (0..4u32)
            .map(|w| {
                let path = path.clone();
                thread::spawn(move || {
                    let db = open(&path);
                    for j in 0..50 {
                        let job = w * 100 + j;
                        db.insert_creating(CLUSTER, job, "n1", &format!("t{job}"))
                            .expect("insert");
                        assert!(db.delete_row(CLUSTER, job, "n1").expect("delete"));
                    }
                })
            })
            .collect();
        for h in writers {
            h.join().expect("writer");
        }
        // One ticket per write, no lock left, and no file beside the database but SQLite's
        // and the queue file.
        assert_eq!(next_ticket(&path), format!("{:020}\n", 4 * 2 * 50 + 1));
        assert!(!queue_byte_held(&path, 0, None));
        let dir = path.parent().expect("dir");
        let mut names: Vec<_> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            // SQLite's `-wal` and `-shm` (removed when the last connection closes).
            .filter(|n| !n.starts_with("mapping.db-"))
            .collect();
        names.sort();
        assert_eq!(names, ["mapping.db", "mapping.db.writers"]);
    }

    #[test]
    fn a_garbled_ticket_number_costs_nothing_but_order() {
        let (_d, path) = temp();
        let db = open(&path);
        let queue = with_suffix(&path, QUEUE_SUFFIX);
        // Garbage, longer than a number: read as 0, replaced by a number.
        fs::write(&queue, "not a number\n".repeat(10)).expect("garble");
        db.insert_creating(CLUSTER, 1, "n1", "t1").expect("insert");
        assert_eq!(next_ticket(&path), format!("{:020}\n", 1));

        // The number goes back while a writer holds ticket 1: the next writer finds 1 taken,
        // takes 2 and waits for the holder, as it should.
        let holder = writers_turn(&path, Duration::from_secs(10))
            .expect("queue")
            .expect("turn");
        assert_eq!(holder.ticket, 1);
        fs::write(&queue, "1\n").expect("set the number back");
        let waiter = turn_on_a_thread(&path);
        wait_until("the writer queued", || ticket_held(&path, 2));
        thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "went before the holder");
        drop(holder);
        assert_eq!(waiter.join().expect("writer").0, 2);
        assert_eq!(next_ticket(&path), format!("{:020}\n", 3));
    }

    #[test]
    fn write_waits_for_a_lock_shorter_than_the_busy_timeout() {
        let (_d, path) = temp();
        let db = open(&path);
        let h = hold_exclusive(&path, Duration::from_secs(1));
        let t = Instant::now();
        db.insert_creating(CLUSTER, 1, "n1", "t1")
            .expect("waits, then succeeds");
        waited_at_least(t, 800);
        h.join().expect("holder");
        assert_eq!(db.job_rows(CLUSTER, 1).expect("rows").len(), 1);
    }

    #[test]
    fn lock_longer_than_the_busy_timeout_gives_a_busy_error() {
        let (_d, path) = temp();
        let db = MappingDb::open(&path, Duration::from_millis(100)).expect("open");
        let h = hold_exclusive(&path, Duration::from_secs(1));
        let t0 = Instant::now();
        let err = db
            .insert_creating(CLUSTER, 1, "n1", "t1")
            .expect_err("busy");
        // The busy handler kept trying for the whole busy timeout before giving up.
        assert!(
            t0.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t0.elapsed()
        );
        h.join().expect("holder");
        assert!(
            matches!(
                &err,
                MappingError::Busy { op, .. }
                    if matches!(**op, Op::InsertCreating { job_id: 1, .. })
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("busy/locked") && msg.contains(&path.display().to_string()),
            "{msg}"
        );
        // Nothing half-written: the row can be inserted once the lock is gone.
        db.insert_creating(CLUSTER, 1, "n1", "t1")
            .expect("insert after lock");
    }

    /// Node names of worker job `j`; even jobs get two nodes, odd ones three.
    fn worker_nodes(j: u32) -> Vec<String> {
        (0..2 + j % 2).map(|n| format!("n{n}")).collect()
    }

    /// What the worker leaves for job `j`: jobs ≡ 0 mod 3 are deleted whole, jobs ≡ 1 lose
    /// node n0, the rest keep every node, Running on VM `j * 10 + n`.
    fn expected_rows(j: u32) -> Vec<(String, Option<u32>, RowState)> {
        if j.is_multiple_of(3) {
            return Vec::new();
        }
        worker_nodes(j)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !(j % 3 == 1 && *i == 0))
            .map(|(i, n)| (n, Some(j * 10 + i as u32), RowState::Running))
            .collect()
    }

    /// Worker half of the concurrency test: runs only in a child process spawned by
    /// `thirty_two_processes_lose_nothing`; returns at once in a normal test run.
    #[test]
    fn concurrent_worker_process() {
        let Ok(spec) = std::env::var(WORKER_ENV) else {
            return;
        };
        let mut parts = spec.split('|');
        let path = PathBuf::from(parts.next().expect("path"));
        let first: u32 = parts.next().expect("first").parse().expect("first job");
        let count: u32 = parts.next().expect("count").parse().expect("count");
        let db = open(&path);
        for j in first..first + count {
            let nodes = worker_nodes(j);
            for n in &nodes {
                db.insert_creating(CLUSTER, j, n, &format!("req-{j}-{n}"))
                    .expect("insert");
            }
            for (i, n) in nodes.iter().enumerate() {
                db.set_vm(
                    &format!("req-{j}-{n}"),
                    j * 10 + i as u32,
                    RowState::Booting,
                )
                .expect("set_vm");
                db.set_state(CLUSTER, j, n, RowState::Running, Some("up"))
                    .expect("set_state");
            }
            assert_eq!(
                db.job_rows(CLUSTER, j).expect("job rows").len(),
                nodes.len()
            );
            match j % 3 {
                0 => assert_eq!(db.delete_job(CLUSTER, j).expect("delete_job"), nodes.len()),
                1 => assert!(db.delete_row(CLUSTER, j, &nodes[0]).expect("delete_row")),
                _ => {}
            }
        }
    }

    #[test]
    fn thirty_two_processes_lose_nothing() {
        let (_d, path) = temp();
        let exe = std::env::current_exe().expect("current_exe");
        // The harness names tests without the crate: strip the first path segment.
        let module = module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_, m)| m);
        let worker = format!("{module}::concurrent_worker_process");
        let t = Instant::now();
        let children: Vec<_> = (0..WORKERS)
            .map(|w| {
                let spec = format!(
                    "{}|{}|{}",
                    path.display(),
                    1000 + w * JOBS_PER_WORKER,
                    JOBS_PER_WORKER
                );
                Command::new(&exe)
                    .args(["--exact", &worker, "--nocapture", "--test-threads=1"])
                    .env(WORKER_ENV, spec)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn worker")
            })
            .collect();
        for (w, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().expect("wait worker");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "worker {w}: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!("{WORKERS} worker processes took {:?}", t.elapsed());

        let db = open(&path);
        let got: Vec<_> = db
            .all_rows(CLUSTER)
            .expect("rows")
            .into_iter()
            .map(|r| (r.job_id, r.node, r.vm_id, r.state))
            .collect();
        let want: Vec<_> = (1000..1000 + WORKERS * JOBS_PER_WORKER)
            .flat_map(|j| {
                expected_rows(j)
                    .into_iter()
                    .map(move |(n, v, s)| (j, n, v, s))
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_teardown_claim_is_taken_once_and_can_be_retaken_when_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = MappingDb::open(&dir.path().join("m.db"), Duration::from_secs(5)).unwrap();
        let other = MappingDb::open(&dir.path().join("m.db"), Duration::from_secs(5)).unwrap();
        db.insert_creating("c", 7, "vm1", "t1").unwrap();
        db.insert_creating("c", 7, "vm2", "t2").unwrap();
        db.set_vm("t1", 11, RowState::Running).unwrap();
        let first = db
            .claim_teardown("c", 7, None, Duration::from_secs(60))
            .unwrap();
        assert_eq!(first.len(), 2);
        assert!(other
            .claim_teardown("c", 7, None, Duration::from_secs(60))
            .unwrap()
            .is_empty());
        // A teardown that died leaves its claim; after `reclaim_after` another takes it.
        let again = other.claim_teardown("c", 7, None, Duration::ZERO).unwrap();
        assert_eq!(again.len(), 2);
        assert!(db
            .job_rows("c", 7)
            .unwrap()
            .iter()
            .all(|r| r.state == RowState::TearingDown));
    }

    #[test]
    fn a_node_scoped_claim_takes_only_those_nodes_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = MappingDb::open(&dir.path().join("m.db"), Duration::from_secs(5)).unwrap();
        for (node, tag) in [("vm1", "t1"), ("vm2", "t2"), ("vm3", "t3")] {
            db.insert_creating("c", 7, node, tag).unwrap();
        }
        let only = ["vm2".to_string(), "vm9".to_string()];
        let claimed = db
            .claim_teardown("c", 7, Some(&only), Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            claimed.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(),
            ["vm2"]
        );
        let states: Vec<(String, RowState)> = db
            .job_rows("c", 7)
            .unwrap()
            .into_iter()
            .map(|r| (r.node, r.state))
            .collect();
        assert_eq!(
            states,
            [
                ("vm1".to_string(), RowState::Creating),
                ("vm2".to_string(), RowState::TearingDown),
                ("vm3".to_string(), RowState::Creating),
            ]
        );
        // The rest of the job is still there for a whole-job claim.
        let rest = db
            .claim_teardown("c", 7, None, Duration::from_secs(60))
            .unwrap();
        assert_eq!(rest.len(), 2);
    }
}
