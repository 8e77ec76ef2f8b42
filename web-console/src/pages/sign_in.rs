//! Signing in with an API key, and out.

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::session::{self, Visit};
use crate::{Console, ConsoleError, assets, render};

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    message: Option<&'static str>,
    failed: bool,
    stylesheet: String,
    icon: String,
}

fn page(message: Option<&'static str>, failed: bool) -> Response {
    render(&SignInPage {
        message,
        failed,
        stylesheet: assets::STYLESHEET.url(),
        icon: assets::ICON.url(),
    })
}

#[derive(Debug, Deserialize)]
pub struct SignInQuery {
    signed_out: Option<String>,
}

pub async fn form(visit: Option<Visit>, Query(query): Query<SignInQuery>) -> Response {
    if visit.is_some() {
        return Redirect::to("/console/overview").into_response();
    }
    match query.signed_out {
        Some(_) => page(Some("You are signed out."), false),
        None => page(None, false),
    }
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    key: String,
}

pub async fn sign_in(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Result<Response, ConsoleError> {
    // No session yet, so no token to check: a sign-in posted from another site (to sign a
    // victim in to the attacker's tenant) is refused by where the browser says it came from.
    session::same_origin(&headers)?;
    let key = console
        .keys
        .check_key(&form.key)
        .await
        .map_err(|_| ConsoleError::Unavailable("the key store is not answering".into()))?;
    let Some(key) = key else {
        metrics::counter!("console_sign_ins_total", "outcome" => "refused").increment(1);
        let mut response = page(Some("That key is not valid. Check it and try again."), true);
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(response);
    };
    let (token, _) = console
        .keys
        .open_session(&key)
        .await
        .map_err(|_| ConsoleError::Unavailable("the session store is not answering".into()))?;
    metrics::counter!("console_sign_ins_total", "outcome" => "signed_in").increment(1);
    tracing::info!(key_id = %key.key_id, tenant = %key.tenant, "signed in to the console");
    let mut response = Redirect::to("/console/overview").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(&token, console.secure_cookie)?,
    );
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct SignOutForm {
    csrf: String,
}

pub async fn sign_out(
    State(console): State<Arc<Console>>,
    visit: Visit,
    headers: HeaderMap,
    Form(form): Form<SignOutForm>,
) -> Result<Response, ConsoleError> {
    visit.check_form(&headers, &form.csrf)?;
    console
        .keys
        .end_session(&visit.signed_in.session.session_id)
        .await
        .map_err(|_| ConsoleError::Unavailable("the session store is not answering".into()))?;
    let mut response = Redirect::to("/console/sign-in?signed_out=1").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::clear_cookie(console.secure_cookie),
    );
    Ok(response)
}
