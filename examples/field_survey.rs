//! Two inspectors fill in the same building survey offline, and nothing either typed is lost.
//!
//! Ana's and Ben's tablets each hold a replica (its own durable store in a temporary
//! directory) and sync directly over QUIC on loopback. The survey record is three documents:
//!
//! - `weather`, a low-risk field: a last-writer-wins register. Concurrent answers resolve to
//!   the later write, on both tablets alike.
//! - `structural damage`, a critical field: a multi-value register. Concurrent answers are all
//!   kept and shown side by side for a person to merge; nobody's assessment is overwritten.
//! - `answers`, an Automerge document: a list every answer is appended to, with who typed it,
//!   so even the answer that lost a low-risk field stays in the record.
//!
//! Photos are attachments (blobs): kept as files beside the store, named by their hash, and
//! referred to from the `answers` document. A tablet fetches the photos of the documents it
//! holds as soon as it learns of them, each 16 KiB checked against the hash as it arrives.
//!
//! Both tablets go offline, both inspectors answer both fields, Ben photographs the crack he
//! reports, and they come back online. The example prints what each tablet shows, merges the
//! critical field by hand, and exits 0 only if both tablets agree, every typed answer is in
//! the record, and Ana's tablet holds Ben's photo, byte for byte.
//!
//! Run it with `cargo run --example field_survey`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ferry::automerge::transaction::Transactable;
use ferry::automerge::{ObjType, ROOT, ReadDoc, Value};
use ferry::{Access, BackoffConfig, BlobHash, Doc, MultiRegister, Register, Replica};

/// One tablet: its replica and its handles on the survey's documents.
struct Tablet {
    inspector: &'static str,
    replica: Replica,
    weather: Register,
    damage: MultiRegister,
    answers: Doc,
}

impl Tablet {
    /// Records an answer: the field's new value, and a line in the answer log.
    async fn answer(&self, field: &str, value: &str) -> anyhow::Result<()> {
        match field {
            "weather" => self.weather.set(value).await?,
            _ => self.damage.set(value).await?,
        }
        let line = format!("{}: {field} = {value}", self.inspector);
        self.answers
            .change(move |tx| {
                let Some((Value::Object(ObjType::List), list)) = tx.get(ROOT, "answers")? else {
                    return Err(ferry::automerge::AutomergeError::InvalidObjId(
                        "answers".into(),
                    ));
                };
                let at = tx.length(&list);
                tx.insert(&list, at, line)?;
                Ok(())
            })
            .await?;
        println!(
            "  {:<4} answers {field}: {value:?} (saved on the tablet)",
            self.inspector
        );
        Ok(())
    }

    fn log(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.answers.read(|d| {
            let Ok(Some((Value::Object(ObjType::List), list))) = d.get(ROOT, "answers") else {
                return Vec::new();
            };
            (0..d.length(&list))
                .filter_map(|i| match d.get(&list, i) {
                    Ok(Some((Value::Scalar(s), _))) => s.as_str().map(str::to_owned),
                    _ => None,
                })
                .collect()
        })?)
    }

    fn weather(&self) -> anyhow::Result<String> {
        Ok(text(self.weather.get()?.unwrap_or_default()))
    }

    fn damage(&self) -> anyhow::Result<Vec<String>> {
        let mut values: Vec<String> = self.damage.values()?.into_iter().map(text).collect();
        values.sort();
        Ok(values)
    }
}

/// A stand-in for a 1 MB JPEG: bytes that do not compress.
fn photo_bytes() -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..1_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Waits until `replica` holds the blob `hash` (fetched by itself, as its documents refer to
/// it).
async fn photo_arrives(replica: &Replica, hash: BlobHash) -> anyhow::Result<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bytes) = replica.blob(hash).await {
            return Ok(bytes);
        }
        ensure!(Instant::now() < deadline, "the photo did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn open(dir: &std::path::Path) -> anyhow::Result<Replica> {
    let backoff = BackoffConfig {
        min: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    Ok(Replica::builder(dir).backoff(backoff).open().await?)
}

/// Waits until both tablets hold the same of everything.
async fn converged(a: &Tablet, b: &Tablet) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let same = a.weather()? == b.weather()?
            && a.damage()? == b.damage()?
            && a.answers.heads()? == b.answers.heads()?;
        if same {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the tablets did not converge");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let ana = open(dirs[0].path()).await?;
    let ben = open(dirs[1].path()).await?;
    let ana_addr = ana.serve(loopback).await?;
    let ben_addr = ben.serve(loopback).await?;
    ana.add_peer(ben.peer_id(), ben_addr, Access::ReadWrite)
        .await?;
    ben.add_peer(ana.peer_id(), ana_addr, Access::ReadWrite)
        .await?;

    // Ana sets the survey up; Ben's tablet receives it.
    let weather = ana.create_register().await?;
    let damage = ana.create_multi_register().await?;
    let answers = ana.create_doc().await?;
    answers
        .change(|tx| tx.put_object(ROOT, "answers", ObjType::List).map(drop))
        .await?;
    let ben_answers = ben
        .doc_when_available(answers.id(), Duration::from_secs(20))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ben.register(weather.id()).is_err() || ben.multi_register(damage.id()).is_err() {
        ensure!(
            Instant::now() < deadline,
            "the survey did not reach Ben's tablet"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let a = Tablet {
        inspector: "Ana",
        replica: ana.clone(),
        weather,
        damage,
        answers,
    };
    let b = Tablet {
        inspector: "Ben",
        replica: ben.clone(),
        weather: ben.register(a.weather.id())?,
        damage: ben.multi_register(a.damage.id())?,
        answers: ben_answers,
    };
    converged(&a, &b).await?;

    println!("both tablets go offline (in the basement)");
    ana.shutdown().await;
    ben.shutdown().await;
    a.answer("weather", "sunny").await?;
    b.answer("structural damage", "crack in the north wall, 2 m")
        .await?;
    // Ben photographs the crack: the photo is saved on his tablet, and the answers refer to it.
    let photo = photo_bytes();
    let crack_photo = ben.add_blob(photo.clone()).await?;
    b.answers
        .change(move |tx| tx.put(ROOT, "crack photo", crack_photo.reference()))
        .await?;
    println!(
        "  Ben  photographs the crack: {} KB, saved as blob {}…",
        photo.len() / 1000,
        &crack_photo.to_string()[..12]
    );
    a.answer("structural damage", "none visible").await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.answer("weather", "overcast").await?; // the later write
    let typed = [
        "Ana: weather = sunny",
        "Ben: structural damage = crack in the north wall, 2 m",
        "Ana: structural damage = none visible",
        "Ben: weather = overcast",
    ];

    println!("\nback online: nobody presses sync");
    ana.serve(ana_addr).await?;
    ben.serve(ben_addr).await?;
    converged(&a, &b).await?;
    let arrived = photo_arrives(&ana, crack_photo).await?;
    for t in [&a, &b] {
        println!("\n{}'s tablet shows", t.inspector);
        println!("  weather (last writer wins):  {}", t.weather()?);
        let values = t.damage()?;
        if t.damage.is_conflicted()? {
            println!(
                "  structural damage: CONFLICT, {} answers to merge:",
                values.len()
            );
            for v in &values {
                println!("    - {v}");
            }
        } else {
            println!("  structural damage: {}", values.join(""));
        }
        println!("  answer log: {} entries", t.log()?.len());
        let photos = t.replica.blobs()?;
        println!("  photos held: {}", photos.len());
    }

    // The checks this example exists for.
    ensure!(
        a.weather()? == "overcast",
        "the later weather answer should win"
    );
    ensure!(
        a.damage()?
            == vec![
                "crack in the north wall, 2 m".to_owned(),
                "none visible".to_owned()
            ],
        "both damage assessments should be kept"
    );
    ensure!(
        arrived == photo,
        "Ana's copy of the photo should be Ben's, byte for byte"
    );
    let referred = a.answers.read(|d| {
        d.get(ROOT, "crack photo")
            .ok()
            .flatten()
            .and_then(|(v, _)| v.as_str().and_then(BlobHash::from_reference))
    })?;
    ensure!(
        referred == Some(crack_photo),
        "Ana's answers should refer to the photo"
    );
    for t in [&a, &b] {
        let log = t.log()?;
        for answer in typed {
            ensure!(
                log.iter().any(|l| l == answer),
                "{answer:?} is missing on {}'s tablet",
                t.inspector
            );
        }
    }

    // Ana reads both assessments and settles the critical field; Ben's tablet follows.
    println!("\nAna checks the wall and merges the two assessments");
    a.answer(
        "structural damage",
        "crack in the north wall, 2 m (checked)",
    )
    .await?;
    converged(&a, &b).await?;
    let settled = b.damage()?;
    ensure!(
        settled == vec!["crack in the north wall, 2 m (checked)".to_owned()]
            && !b.damage.is_conflicted()?,
        "the merge should settle the field everywhere: {settled:?}"
    );
    println!("  Ben's tablet now shows: {}", settled.join(""));
    let log = b.log().context("the answer log")?;
    println!(
        "\nthe answer log, the same on both tablets ({} entries):",
        log.len()
    );
    for line in &log {
        println!("  {line}");
    }
    println!("\nno typed answer was lost: yes");
    println!("Ben's photo on Ana's tablet, checked against its hash: yes");
    for t in [&a, &b] {
        t.replica.shutdown().await;
    }
    Ok(())
}
