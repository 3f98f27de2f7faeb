//! A link's faults, each on its own: what arrives, twice, late, out of order, or not at all.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ferry_faults::{Faults, Link, Way};
use tokio::net::UdpSocket;

/// A sender, a target, and a link between them.
async fn setup(seed: u64) -> (UdpSocket, UdpSocket, Link) {
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let link = Link::start(target.local_addr().unwrap(), seed)
        .await
        .unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sender.connect(link.addr()).await.unwrap();
    (sender, target, link)
}

/// Sends `n` numbered datagrams of `len` bytes, a few at a time, so that the test's own
/// sockets, with the system's default buffers, drop none.
async fn send(sender: &UdpSocket, n: u32, len: usize) {
    for i in 0..n {
        let mut bytes = vec![0u8; len.max(4)];
        bytes[..4].copy_from_slice(&i.to_le_bytes());
        sender.send(&bytes).await.unwrap();
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The numbers of the datagrams that arrive until `quiet` passes with none.
async fn receive(socket: &UdpSocket, quiet: Duration) -> Vec<u32> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_535];
    while let Ok(Ok(len)) = tokio::time::timeout(quiet, socket.recv(&mut buf)).await {
        assert!(len >= 4);
        got.push(u32::from_le_bytes(buf[..4].try_into().unwrap()));
    }
    got
}

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn without_faults_everything_arrives_in_order_and_answers_come_back() {
    let (sender, target, link) = setup(1).await;
    send(&sender, 1, 100).await;
    let mut buf = [0u8; 100];
    let (_, from) = target.recv_from(&mut buf).await.unwrap();
    let ((), got) = tokio::join!(send(&sender, 200, 100), receive(&target, QUIET));
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    // The answer goes back to the sender, from the link's address.
    target.send_to(b"answer", from).await.unwrap();
    let mut buf = [0u8; 16];
    let len = sender.recv(&mut buf).await.unwrap();
    assert_eq!(&buf[..len], b"answer");
    assert_eq!(link.counts(Way::Forth).sent, 201);
    assert_eq!(link.counts(Way::Back).sent, 1);
}

#[tokio::test]
async fn loss_drops_about_its_share_and_a_seed_replays_the_same_drops() {
    let mut runs = Vec::new();
    for seed in [5, 5, 6] {
        let (sender, target, link) = setup(seed).await;
        link.set(
            Way::Forth,
            Faults {
                loss: 0.3,
                ..Faults::NONE
            },
        );
        let ((), got) = tokio::join!(send(&sender, 1000, 50), receive(&target, QUIET));
        assert!((600..=800).contains(&got.len()), "{} of 1000", got.len());
        assert_eq!(link.counts(Way::Forth).dropped, 1000 - got.len() as u64);
        runs.push(got);
    }
    assert_eq!(runs[0], runs[1], "the same seed dropped other datagrams");
    assert_ne!(runs[0], runs[2], "another seed dropped the same datagrams");
}

#[tokio::test]
async fn duplication_sends_twice() {
    let (sender, target, link) = setup(2).await;
    link.set(
        Way::Forth,
        Faults {
            duplicate: 1.0,
            ..Faults::NONE
        },
    );
    let ((), got) = tokio::join!(send(&sender, 10, 50), receive(&target, QUIET));
    assert_eq!(got.len(), 20);
    for i in 0..10 {
        assert_eq!(got.iter().filter(|&&n| n == i).count(), 2);
    }
}

#[tokio::test]
async fn delay_holds_and_reordering_lets_later_datagrams_overtake() {
    let (sender, target, link) = setup(3).await;
    link.set(
        Way::Forth,
        Faults {
            delay: Duration::from_millis(80),
            ..Faults::NONE
        },
    );
    let started = Instant::now();
    send(&sender, 1, 50).await;
    let mut buf = [0u8; 64];
    target.recv(&mut buf).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(80));

    link.set(
        Way::Forth,
        Faults {
            reorder: 0.3,
            reorder_by: Duration::from_millis(30),
            jitter: Duration::from_millis(5),
            ..Faults::NONE
        },
    );
    let ((), got) = tokio::join!(send(&sender, 200, 50), receive(&target, QUIET));
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..200).collect::<Vec<_>>(), "lost or duplicated");
    assert_ne!(got, sorted, "nothing was reordered");
}

#[tokio::test]
async fn a_rate_cap_spaces_datagrams_out_and_drops_what_overflows_its_queue() {
    let (sender, target, link) = setup(4).await;
    // 100 kB/s: 1 kB datagrams go out every 10 ms; 50 ms of queue holds about 5.
    link.set(
        Way::Forth,
        Faults {
            rate: Some(100_000),
            queue: Duration::from_millis(50),
            ..Faults::NONE
        },
    );
    let started = Instant::now();
    let ((), got) = tokio::join!(
        send(&sender, 5, 1000),
        receive(&target, Duration::from_millis(150))
    );
    assert_eq!(got.len(), 5);
    assert!(started.elapsed() >= Duration::from_millis(40));
    // A burst far over the queue: most of it is dropped.
    let ((), got) = tokio::join!(
        send(&sender, 100, 1000),
        receive(&target, Duration::from_millis(200))
    );
    assert!(got.len() < 20, "{} of a 100 burst went through", got.len());
    assert!(link.counts(Way::Forth).dropped >= 80);
}

#[tokio::test]
async fn a_one_way_partition_cuts_one_way_until_healed() {
    let (sender, target, link) = setup(5).await;
    send(&sender, 1, 10).await;
    let mut buf = [0u8; 64];
    let (_, from) = target.recv_from(&mut buf).await.unwrap();

    link.partition(Way::Forth);
    send(&sender, 5, 10).await;
    assert!(receive(&target, QUIET).await.is_empty());
    // The other way still goes.
    target.send_to(&7u32.to_le_bytes(), from).await.unwrap();
    assert_eq!(receive(&sender, QUIET).await, vec![7]);

    link.partition(Way::Both);
    target.send_to(&8u32.to_le_bytes(), from).await.unwrap();
    assert!(receive(&sender, QUIET).await.is_empty());

    link.heal();
    send(&sender, 3, 10).await;
    assert_eq!(receive(&target, QUIET).await, vec![0, 1, 2]);
    target.send_to(&9u32.to_le_bytes(), from).await.unwrap();
    assert_eq!(receive(&sender, QUIET).await, vec![9]);
}
