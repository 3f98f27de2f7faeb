//! Read counters that agree across devices without ever talking to a server.
//!
//! Three devices (a phone, a laptop and a tablet) count how often each message in a chat has been
//! read, while offline. Each increment yields a small delta; the deltas wait in an outbox as
//! encoded bytes and are delivered later, shuffled and some of them twice, the way a flaky network
//! delivers them. Every device ends with the same counts, and every read is counted exactly once.
//!
//! Run it with `cargo run --example counters`. It exits non-zero if the devices disagree.

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use ferry_crdt::{Crdt, GCounter, ReplicaId};
use rand::seq::SliceRandom;

/// The most bytes one delivered delta may decode to.
const DELTA_LIMIT: usize = 64 * 1024;

struct Device {
    name: &'static str,
    id: ReplicaId,
    /// Read counts per message id.
    reads: BTreeMap<&'static str, GCounter>,
}

impl Device {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            id: ReplicaId::random(),
            reads: BTreeMap::new(),
        }
    }

    /// Counts a read of `message` and returns the delta to send, as bytes.
    fn read(&mut self, message: &'static str) -> anyhow::Result<(&'static str, Vec<u8>)> {
        let counter = self.reads.entry(message).or_default();
        let delta = counter.increment(self.id, 1)?;
        Ok((message, delta.encode()?))
    }

    /// Merges a delta that arrived from another device.
    fn receive(&mut self, message: &'static str, bytes: &[u8]) -> anyhow::Result<bool> {
        let delta = GCounter::decode(bytes, DELTA_LIMIT).context("a delta arrived damaged")?;
        Ok(self.reads.entry(message).or_default().merge(&delta))
    }

    fn summary(&self) -> String {
        let counts: Vec<String> = self
            .reads
            .iter()
            .map(|(message, counter)| format!("{message}={}", counter.value()))
            .collect();
        format!("{:<7} {}", self.name, counts.join("  "))
    }
}

fn main() -> anyhow::Result<()> {
    let mut devices = [
        Device::new("phone"),
        Device::new("laptop"),
        Device::new("tablet"),
    ];
    let messages = ["hello", "lunch?", "photo", "bye"];
    let mut rng = rand::rng();

    // Offline: each device reads messages and queues its deltas.
    let mut outbox: Vec<(usize, &'static str, Vec<u8>)> = Vec::new();
    let mut truth: BTreeMap<&'static str, u128> = BTreeMap::new();
    for (from, device) in devices.iter_mut().enumerate() {
        for (i, message) in messages.iter().enumerate() {
            for _ in 0..(from + i) % 4 + 1 {
                let (message, bytes) = device.read(message)?;
                outbox.push((from, message, bytes));
                *truth.entry(message).or_default() += 1;
            }
        }
    }
    println!("offline, each device sees only its own reads:");
    for device in &devices {
        println!("  {}", device.summary());
    }

    // Back online: deliver every delta to every other device, shuffled, a third of them twice.
    let mut deliveries: Vec<(usize, usize)> = Vec::new();
    for (n, (from, _, _)) in outbox.iter().enumerate() {
        for to in (0..devices.len()).filter(|to| to != from) {
            deliveries.push((n, to));
            if n % 3 == 0 {
                deliveries.push((n, to));
            }
        }
    }
    deliveries.shuffle(&mut rng);
    let (mut applied, mut ignored, mut bytes_sent) = (0, 0, 0);
    for (n, to) in deliveries {
        let (_, message, bytes) = &outbox[n];
        bytes_sent += bytes.len();
        if devices[to].receive(message, bytes)? {
            applied += 1;
        } else {
            ignored += 1;
        }
    }
    println!(
        "\ndelivered {} deltas ({bytes_sent} bytes), shuffled: {applied} changed a counter, \
         {ignored} were already known",
        applied + ignored
    );

    println!("\nafter sync:");
    for device in &devices {
        println!("  {}", device.summary());
    }
    for device in &devices {
        for (message, expected) in &truth {
            let got = device.reads.get(message).map(GCounter::value).unwrap_or(0);
            ensure!(
                got == *expected,
                "{} counts {got} reads of {message}, expected {expected}",
                device.name
            );
        }
    }
    let digests: Vec<_> = devices
        .iter()
        .map(|d| {
            d.reads
                .values()
                .map(GCounter::digest)
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    ensure!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "the devices hold different states"
    );
    println!("\nconverged: every device counts every read exactly once");
    Ok(())
}
