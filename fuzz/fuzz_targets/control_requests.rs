//! Feeds arbitrary lines to what answers `ferry serve`'s control socket: each line is decoded
//! as a request (JSON, as the socket reads it) and, when it is a command, run on a replica, as
//! the socket runs it. Nothing may panic, whatever the command asks (paths into documents that
//! are not maps, values of any JSON shape, ids that name nothing, kinds that do not match).
//!
//! The same replica serves every input of a run, so commands build on what earlier ones made.
//! Requests that wait on the network (`sync_once`, `fetch_blob`, `watch`) are decoded only, and
//! `blob_add` too (it reads a file the client names).
//!
//! `cargo +nightly fuzz run control_requests fuzz/corpus/control_requests fuzz/seeds/control_requests -- -max_total_time=300`
//! from the repository root.

#![no_main]
#![allow(dead_code, unreachable_pub)]

// The CLI's own modules, compiled in here: the CLI is a binary, not a library.
#[path = "../../crates/cli/src/ops.rs"]
mod ops;
#[path = "../../crates/cli/src/protocol.rs"]
mod protocol;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    replica: ferry::Replica,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let replica = runtime
            .block_on(ferry::Replica::open(dir.path()))
            .expect("a replica");
        Fixture {
            runtime,
            replica,
            _dir: dir,
        }
    })
}

fuzz_target!(|input: &[u8]| {
    let Ok(line) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(request) = serde_json::from_str::<protocol::Request>(line) else {
        return;
    };
    if let protocol::Request::Run(command) = request {
        if matches!(command, protocol::Command::BlobAdd { .. }) {
            // Reads a file the client names on the server's machine: a fuzzer naming
            // /dev/zero would only fill the disk.
            return;
        }
        let fixture = fixture();
        let _ = fixture
            .runtime
            .block_on(ops::execute(&fixture.replica, &command));
    }
});
