//! The stand-in mini-program code API as its own process, for benchmarks (`benches/quota.sh`).
//!
//!     wechat-stand-in [--port N] [--quota CALLS] [--window-ms MS] [--window aligned|sliding]
//!
//! Listens on loopback, prints `listening on http://…` once it does, and serves what it saw
//! at `GET /stand-in/calls` until it is stopped.

use anyhow::{Context, bail};
use tests::wechat_api::{Behaviour, WechatApi};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut behaviour = Behaviour::default();
    let mut port = 0_u16;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => port = value.parse().context("--port")?,
            "--quota" => behaviour.quota = value.parse().context("--quota")?,
            "--window-ms" => behaviour.window_ms = value.parse().context("--window-ms")?,
            "--window" => behaviour.window = value.parse().map_err(anyhow::Error::msg)?,
            other => bail!("unknown flag {other}"),
        }
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .context("binding on loopback")?;
    let api = WechatApi::start_on(listener, behaviour);
    println!("listening on {}", api.endpoint());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
