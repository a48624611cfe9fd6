//! Who holds the store's SQLite write lock (#1606). SQLite takes POSIX record
//! locks, so `F_GETLK` names the holder's pid: the RESERVED/PENDING bytes of
//! the database file (rollback journal) or the WAL write-lock byte of `-shm`.
//! Nothing is written and the database is never opened through SQLite.

use std::fs::File;
use std::path::Path;

use crate::sys::Pid;

/// SQLite's lock byte offsets (`os_unix.c`).
const PENDING_BYTE: i64 = 0x4000_0000;
/// Byte 120 of the shm file is WAL_WRITE_LOCK.
const WAL_WRITE_LOCK: i64 = 120;

/// OFD locks report -1: a writer exists but cannot be named.
fn getlk(file: &File, start: i64, len: i64) -> Option<Pid> {
    crate::sys::write_lock_pid(file, start, len)
}

/// The pid holding a write lock on the store, if any (`Some(-1)` when the
/// lock is an OFD lock that carries no pid). Opening the file read-only and
/// closing it cannot drop locks: this process holds none on it.
pub fn write_lock_holder(db: &Path) -> Option<Pid> {
    let file = File::open(db).ok()?;
    let mut magic = [0u8; 16];
    use std::io::Read;
    // A store created by a writer whose first transaction is still open is
    // empty; anything else must be a SQLite file.
    let len = file.metadata().ok()?.len();
    if len > 0 && ((&file).read_exact(&mut magic).is_err() || &magic != b"SQLite format 3\0") {
        return None;
    }
    // RESERVED (writer) is PENDING_BYTE+1; PENDING and the SHARED range follow.
    if let Some(pid) = getlk(&file, PENDING_BYTE + 1, 1) {
        return Some(pid);
    }
    let shm = db.with_file_name(format!("{}-shm", db.file_name()?.to_string_lossy()));
    let shm = File::open(shm).ok()?;
    getlk(&shm, WAL_WRITE_LOCK, 1)
}
