//! How fast a binder can take codes out of a Kafka lane, apart from binding them: fills a
//! fresh lane on a real broker with `--codes` codes, then has `--takers` tasks take and ack
//! them through qrpool's `KafkaReader` (what the binder does, minus the store), and prints
//! codes/s. In the same run, a plain librdkafka consumer reads a topic filled the same way:
//! the rate the broker and client library allow, the reader's ceiling.
//!
//! `cargo run --release -p benches --bin pool-drain -- --brokers 127.0.0.1:9092 --codes 20000`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};

use config::KafkaSettings;
use pool::{KafkaReader, KafkaWriter, PoolReader, PoolWriter};
use records::{CodeImage, PoolRecord, RequestId};

#[derive(Debug, Parser)]
struct Args {
    /// The Kafka-protocol brokers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Codes to fill the lane with and take.
    #[arg(long, default_value_t = 20_000)]
    codes: usize,
    /// Tasks taking codes at once (a binder's concurrent binds).
    #[arg(long, default_value_t = 64)]
    takers: usize,
    /// Codes a reader holds ready (`kafka.prefetch`).
    #[arg(long, default_value_t = 512)]
    prefetch: usize,
}

/// Give up on a run that stops delivering: a reader that loses codes must not hang the bench.
const STALL: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = format!(
        "pool-drain-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp()
    );
    let settings = KafkaSettings {
        brokers: args.brokers.clone(),
        pool_topic: run.clone(),
        group_id: run.clone(),
        session_timeout_ms: 6000,
        prefetch: args.prefetch,
        ..KafkaSettings::default()
    };
    let writer = PoolWriter::Kafka(KafkaWriter::connect(&settings).await?);

    let started = Instant::now();
    fill(&writer, args.codes).await?;
    let filled = started.elapsed();
    println!(
        "{:<34} {:>8} codes in {:>6.2} s = {:>7.0} codes/s",
        "filled the lane (pregen's writer)",
        args.codes,
        filled.as_secs_f64(),
        args.codes as f64 / filled.as_secs_f64()
    );

    let reader = PoolReader::Kafka(KafkaReader::connect(&settings, config::LOCAL_ISSUER).await?);
    // The first code waits for the group to form; that is not the rate.
    let first = reader
        .take(STALL)
        .await?
        .context("no code arrived: did the consumer group form?")?;
    reader.ack(&first);
    let (taken, elapsed) = take_all(&reader, args.codes - 1, args.takers).await?;
    reader.close().await?;
    let reader_rate = taken as f64 / elapsed.as_secs_f64();
    println!(
        "{:<34} {:>8} codes in {:>6.2} s = {:>7.0} codes/s   ({} takers, prefetch {})",
        "KafkaReader take + ack",
        taken,
        elapsed.as_secs_f64(),
        reader_rate,
        args.takers,
        args.prefetch
    );

    // The ceiling: the same number of codes through a bare consumer of a second lane.
    let peer_settings = KafkaSettings {
        pool_topic: format!("{run}-plain"),
        group_id: format!("{run}-plain"),
        ..settings.clone()
    };
    let peer_writer = PoolWriter::Kafka(KafkaWriter::connect(&peer_settings).await?);
    fill(&peer_writer, args.codes).await?;
    let (read, elapsed) = plain_consumer(&peer_settings, args.codes).await?;
    let plain_rate = read as f64 / elapsed.as_secs_f64();
    println!(
        "{:<34} {:>8} codes in {:>6.2} s = {:>7.0} codes/s",
        "plain librdkafka consumer",
        read,
        elapsed.as_secs_f64(),
        plain_rate
    );
    println!("reader / plain consumer: {:.2}", reader_rate / plain_rate);
    Ok(())
}

/// Enqueues `count` local codes, a batch at a time as pregen does.
async fn fill(writer: &PoolWriter, count: usize) -> anyhow::Result<()> {
    let image = CodeImage {
        media_type: "image/png".into(),
        // About the size of a rendered local code.
        bytes: vec![0x5a; 420],
    };
    let mut left = count;
    while left > 0 {
        let batch: Vec<PoolRecord> = (0..left.min(1000))
            .map(|_| {
                let request_id = RequestId::generate();
                PoolRecord {
                    request_id,
                    issuer: config::LOCAL_ISSUER.into(),
                    content: format!("https://qr.example.com/m/{request_id}"),
                    image: Some(image.clone()),
                    created_at: chrono::Utc::now(),
                }
            })
            .collect();
        writer.push(&batch).await?;
        left -= batch.len();
    }
    writer.flush().await?;
    Ok(())
}

/// Takes and acks `count` codes with `takers` tasks; returns how many and how long.
async fn take_all(
    reader: &PoolReader,
    count: usize,
    takers: usize,
) -> anyhow::Result<(usize, Duration)> {
    let taken = Arc::new(AtomicUsize::new(0));
    let all_taken = Arc::new(tokio::sync::Notify::new());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..takers.max(1) {
        let (reader, taken, all_taken) =
            (reader.clone(), Arc::clone(&taken), Arc::clone(&all_taken));
        tasks.spawn(async move {
            loop {
                let Some(delivery) = reader.take(STALL).await? else {
                    bail!(
                        "no code for {STALL:?} after {}",
                        taken.load(Ordering::Relaxed)
                    )
                };
                reader.ack(&delivery);
                if taken.fetch_add(1, Ordering::Relaxed) + 1 == count {
                    all_taken.notify_one();
                }
            }
        });
    }
    tokio::select! {
        () = all_taken.notified() => {}
        Some(result) = tasks.join_next() => {
            result??;
        }
    }
    let elapsed = started.elapsed();
    // The other takers still wait for codes that will not come.
    tasks.shutdown().await;
    Ok((taken.load(Ordering::Relaxed), elapsed))
}

/// Reads `count` messages of the lane with a bare `StreamConsumer` (auto commit, no
/// per-message bookkeeping); timed from the first message.
async fn plain_consumer(
    settings: &KafkaSettings,
    count: usize,
) -> anyhow::Result<(usize, Duration)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", settings.lane_group(config::LOCAL_ISSUER))
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        )
        .create()?;
    consumer.subscribe(&[&settings.lane_topic(config::LOCAL_ISSUER)])?;
    let first = tokio::time::timeout(STALL, consumer.recv())
        .await
        .context("the plain consumer received nothing")??;
    drop(first);
    let started = Instant::now();
    let mut read = 1;
    while read < count {
        tokio::time::timeout(STALL, consumer.recv())
            .await
            .with_context(|| format!("the plain consumer stalled after {read}"))??;
        read += 1;
    }
    Ok((read - 1, started.elapsed()))
}
