//! `qrpool keys …`: making, listing and revoking the API keys of the tenants' apps.

use anyhow::Context;

use bindings::DurableStore;
use config::Settings;
use records::{KeyToken, Scopes, Tenant};

/// Requests per second of a key made without `--rate`.
pub const DEFAULT_RATE_PER_SEC: u32 = 1_000;

/// Makes a key and prints it (the only time its secret is shown).
pub async fn create(
    settings: &Settings,
    tenant: &str,
    scopes: &str,
    rate_per_sec: u32,
) -> anyhow::Result<()> {
    let tenant = Tenant::parse(tenant).context("--tenant")?;
    let scopes = Scopes::parse(scopes).context("--scope")?;
    anyhow::ensure!(scopes != Scopes::default(), "--scope names no scope");
    anyhow::ensure!(rate_per_sec > 0, "--rate must be at least 1");
    let store = open(settings).await?;
    let (token, key) = store
        .create_api_key(&tenant, scopes, rate_per_sec)
        .await
        .context("storing the key")?;
    println!("{}", token.reveal());
    eprintln!(
        "key {} for tenant `{}` (scopes: {}, {} requests/s). The line above is the whole key; \
         it is not shown again.",
        key.key_id,
        key.tenant.as_str(),
        key.scopes,
        key.rate_per_sec
    );
    Ok(())
}

pub async fn list(settings: &Settings) -> anyhow::Result<()> {
    let store = open(settings).await?;
    let keys = store.api_keys().await.context("listing the keys")?;
    println!(
        "{:<14} {:<20} {:<18} {:>8}  {:<20} revoked",
        "key id", "tenant", "scopes", "rate/s", "created"
    );
    for key in keys {
        println!(
            "{:<14} {:<20} {:<18} {:>8}  {:<20} {}",
            key.key_id,
            key.tenant.as_str(),
            key.scopes.to_string(),
            key.rate_per_sec,
            key.created_at.format("%Y-%m-%d %H:%M:%S"),
            key.revoked_at
                .map(|at| at.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default()
        );
    }
    Ok(())
}

pub async fn revoke(settings: &Settings, key_id: &str) -> anyhow::Result<()> {
    let store = open(settings).await?;
    let revoked = store
        .revoke_api_key(key_id)
        .await
        .context("revoking the key")?;
    anyhow::ensure!(revoked, "no active key `{key_id}`");
    println!(
        "Key {key_id} is revoked; binders refuse it within {} s.",
        service::auth::KEY_TTL.as_secs()
    );
    Ok(())
}

/// The key `qrpool up` makes when the store has none, so that the first try works: every
/// scope, for `binder.tenant`. `None` when keys exist already.
pub async fn first_key(settings: &Settings) -> anyhow::Result<Option<KeyToken>> {
    let store = open(settings).await?;
    if !store
        .api_keys()
        .await
        .context("listing the keys")?
        .is_empty()
    {
        return Ok(None);
    }
    let (token, _) = store
        .create_api_key(&settings.binder.tenant, Scopes::all(), DEFAULT_RATE_PER_SEC)
        .await
        .context("storing the first key")?;
    Ok(Some(token))
}

async fn open(settings: &Settings) -> anyhow::Result<DurableStore> {
    DurableStore::connect(settings)
        .await
        .context("opening the binding store, where keys are kept")
}
