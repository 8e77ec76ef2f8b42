//! Print runs: a CSV of params in, codes bound through the batch endpoint, then a ZIP of
//! their images named by a column and a CSV of ids and URLs out.
//!
//! A run binds in chunks (so the page can show progress) in a task of its own; each item
//! carries an idempotency key made of the run's id and its row, so a chunk sent again
//! never binds a row twice. The codes are durable as soon as they are bound; the run's own
//! record (progress, results) is kept in this process for [`RUN_KEPT`] and is lost on a
//! restart — the codes are not (find them under Codes, or bind the CSV again: rows already
//! bound come back as they were).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use records::{Scope, random_base62};

use crate::api::Api;
use crate::pages::export::{csv_response, field};
use crate::session::Visit;
use crate::{Console, ConsoleError, Frame, Section, encode, render};

/// Rows of one run at most (the batch endpoint's own limit).
pub const MAX_ROWS: usize = 10_000;
/// The largest CSV accepted.
pub const MAX_UPLOAD_BYTES: usize = 8 * 1024 * 1024;
/// Items per call to the batch endpoint.
const CHUNK: usize = 100;
/// How long a finished run's results are kept.
const RUN_KEPT: Duration = Duration::from_secs(24 * 60 * 60);
/// Runs kept per process at most (the oldest finished go first).
const MAX_RUNS: usize = 100;

/// The runs of this process.
#[derive(Debug)]
pub struct PrintRuns {
    api: Api,
    runs: Mutex<HashMap<String, Arc<Run>>>,
}

#[derive(Debug)]
pub struct Run {
    tenant: String,
    started: Instant,
    total: usize,
    format: ImageFormat,
    scale: u32,
    state: Mutex<RunState>,
}

#[derive(Debug, Default, Clone)]
struct RunState {
    done: usize,
    finished: Option<Instant>,
    /// Per row, in order: the bound code, or why not.
    rows: Vec<RowOutcome>,
    /// The whole run failed (the store went away, say).
    failure: Option<String>,
    /// The images of the bound rows, once the run ended.
    archive: Option<axum::body::Bytes>,
}

#[derive(Debug, Clone)]
enum RowOutcome {
    Bound {
        name: String,
        request_id: String,
        url: String,
    },
    Failed {
        name: String,
        problem: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Svg => "svg",
        }
    }
}

impl PrintRuns {
    pub fn new(api: Api) -> Self {
        PrintRuns {
            api,
            runs: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, id: &str, tenant: &str) -> Option<Arc<Run>> {
        let runs = self.runs.lock().ok()?;
        runs.get(id).filter(|run| run.tenant == tenant).cloned()
    }

    fn insert(&self, id: String, run: Arc<Run>) {
        let Ok(mut runs) = self.runs.lock() else {
            return;
        };
        runs.retain(|_, run| {
            let finished = run.state.lock().ok().and_then(|state| state.finished);
            finished.is_none_or(|at| at.elapsed() < RUN_KEPT)
        });
        while runs.len() >= MAX_RUNS {
            let oldest = runs
                .iter()
                .min_by_key(|(_, run)| run.started)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(oldest) => runs.remove(&oldest),
                None => break,
            };
        }
        runs.insert(id, run);
    }
}

/// Reads the CSV: a header row of param names, then one code per row. Every column is a
/// param (text); `name_column` (or the row number) names the row's image.
fn parse_csv(text: &[u8], name_column: &str) -> Result<Vec<(String, serde_json::Value)>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(text);
    let headers = reader
        .headers()
        .map_err(|error| format!("the first row must name the columns: {error}"))?
        .clone();
    if headers.is_empty() || headers.iter().any(str::is_empty) {
        return Err("every column needs a name in the first row".into());
    }
    let name_index = if name_column.is_empty() {
        None
    } else {
        Some(
            headers
                .iter()
                .position(|header| header == name_column)
                .ok_or_else(|| {
                    format!("there is no column `{name_column}` to name the files by")
                })?,
        )
    };
    let mut rows = Vec::new();
    for (number, record) in reader.records().enumerate() {
        let record = record.map_err(|error| format!("row {}: {error}", number + 2))?;
        if rows.len() == MAX_ROWS {
            return Err(format!("a print run is at most {MAX_ROWS} rows"));
        }
        let params: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .zip(record.iter())
            .map(|(name, value)| (name.to_owned(), json!(value)))
            .collect();
        let name = name_index
            .and_then(|index| record.get(index))
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("row-{:05}", number + 1));
        rows.push((name, serde_json::Value::Object(params)));
    }
    if rows.is_empty() {
        return Err("the CSV has no rows under its header".into());
    }
    Ok(rows)
}

/// A file name from a cell: letters, digits, `-`, `_` and `.` kept, the rest `_`; made
/// unique within the ZIP.
fn file_name(name: &str, taken: &mut HashMap<String, usize>, extension: &str) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    clean = clean.trim_start_matches('.').to_owned();
    if clean.is_empty() {
        clean = "code".to_owned();
    }
    let seen = taken.entry(clean.clone()).or_insert(0);
    *seen += 1;
    if *seen > 1 {
        format!("{clean}-{seen}.{extension}")
    } else {
        format!("{clean}.{extension}")
    }
}

#[derive(Template)]
#[template(path = "print.html")]
struct PrintPage {
    frame: Frame,
    problem: Option<String>,
    max_rows: usize,
}

fn require_bind(visit: &Visit) -> Result<(), ConsoleError> {
    if visit.can(Scope::Bind) {
        Ok(())
    } else {
        Err(ConsoleError::Forbidden(
            "print runs bind codes: they need a key with the `bind` scope".into(),
        ))
    }
}

fn form_page(visit: &Visit, problem: Option<String>, status: StatusCode) -> Response {
    let mut response = render(&PrintPage {
        frame: Frame::new(visit, Section::Print, "Print runs"),
        problem,
        max_rows: MAX_ROWS,
    });
    *response.status_mut() = status;
    response
}

pub async fn form(visit: Visit) -> Result<Response, ConsoleError> {
    require_bind(&visit)?;
    Ok(form_page(&visit, None, StatusCode::OK))
}

/// `POST /console/print` (multipart: `csrf`, `file`, `name_column`, `format`, `scale`, `issuer`).
pub async fn start(
    State(console): State<Arc<Console>>,
    visit: Visit,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Result<Response, ConsoleError> {
    require_bind(&visit)?;
    let mut fields: HashMap<String, Vec<u8>> = HashMap::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => {
                return Ok(form_page(
                    &visit,
                    Some(format!(
                        "The upload could not be read: {}",
                        error.body_text()
                    )),
                    StatusCode::BAD_REQUEST,
                ));
            }
        };
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = match field.bytes().await {
            Ok(bytes) => bytes,
            Err(error) => {
                return Ok(form_page(
                    &visit,
                    Some(format!(
                        "The upload could not be read: {}",
                        error.body_text()
                    )),
                    StatusCode::BAD_REQUEST,
                ));
            }
        };
        fields.insert(name, bytes.to_vec());
    }
    let text = |name: &str| {
        fields
            .get(name)
            .map(|bytes| String::from_utf8_lossy(bytes).trim().to_owned())
            .unwrap_or_default()
    };
    visit.check_form(&headers, &text("csrf"))?;
    let format = if text("format") == "svg" {
        ImageFormat::Svg
    } else {
        ImageFormat::Png
    };
    let scale: u32 = text("scale").parse().unwrap_or(8).clamp(1, 20);
    let issuer = text("issuer");
    let Some(csv_bytes) = fields.get("file").filter(|bytes| !bytes.is_empty()) else {
        return Ok(form_page(
            &visit,
            Some("Choose a CSV file.".into()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ));
    };
    let rows = match parse_csv(csv_bytes, &text("name_column")) {
        Ok(rows) => rows,
        Err(problem) => {
            return Ok(form_page(
                &visit,
                Some(format!("The CSV can't be used: {problem}.")),
                StatusCode::UNPROCESSABLE_ENTITY,
            ));
        }
    };
    let id = random_base62(16);
    let run = Arc::new(Run {
        tenant: visit.tenant().to_owned(),
        started: Instant::now(),
        total: rows.len(),
        format,
        scale,
        state: Mutex::new(RunState::default()),
    });
    console.print_runs.insert(id.clone(), Arc::clone(&run));
    metrics::counter!("console_print_runs_total").increment(1);
    let api = console.print_runs.api.clone();
    let token = visit.token.clone();
    tokio::spawn(bind_all(api, token, id.clone(), issuer, rows, run));
    Ok(Redirect::to(&format!("/console/print/{id}")).into_response())
}

#[derive(Debug, Deserialize)]
struct BatchLine {
    index: usize,
    code: Option<BoundCode>,
    problem: Option<ProblemText>,
}

#[derive(Debug, Deserialize)]
struct BoundCode {
    request_id: String,
    url: String,
}

#[derive(Debug, Deserialize)]
struct ProblemText {
    title: Option<String>,
    detail: Option<String>,
}

async fn bind_all(
    api: Api,
    token: String,
    id: String,
    issuer: String,
    rows: Vec<(String, serde_json::Value)>,
    run: Arc<Run>,
) {
    let mut archive = Archive::new(run.format, run.scale);
    for (chunk_number, chunk) in rows.chunks(CHUNK).enumerate() {
        let first = chunk_number * CHUNK;
        let items: Vec<serde_json::Value> = chunk
            .iter()
            .enumerate()
            .map(|(offset, (_, params))| {
                let mut item = json!({
                    "params": params,
                    "idempotency_key": format!("print-{id}-{}", first + offset),
                });
                if !issuer.is_empty() {
                    item["issuer"] = json!(issuer);
                }
                item
            })
            .collect();
        let answer = api
            .call(
                &token,
                Method::POST,
                "/v1/codes/batch",
                Some(&json!({ "items": items })),
                None,
            )
            .await
            .and_then(|answer| answer.done());
        let mut outcomes: Vec<RowOutcome> = chunk
            .iter()
            .map(|(name, _)| RowOutcome::Failed {
                name: name.clone(),
                problem: "no answer for this row".into(),
            })
            .collect();
        let mut failure = None;
        match answer {
            Ok(answer) => {
                for line in answer
                    .body
                    .split(|byte| *byte == b'\n')
                    .filter(|line| !line.is_empty())
                {
                    let Ok(line) = serde_json::from_slice::<BatchLine>(line) else {
                        continue;
                    };
                    let Some((name, _)) = chunk.get(line.index) else {
                        continue;
                    };
                    outcomes[line.index] = match (line.code, line.problem) {
                        (Some(code), _) => RowOutcome::Bound {
                            name: name.clone(),
                            request_id: code.request_id,
                            url: code.url,
                        },
                        (None, problem) => RowOutcome::Failed {
                            name: name.clone(),
                            problem: problem
                                .and_then(|problem| problem.detail.or(problem.title))
                                .unwrap_or_else(|| "not bound".into()),
                        },
                    };
                }
            }
            Err(error) => failure = Some(error.to_string()),
        }
        // Drawn as each chunk is bound: the ZIP is ready when the run ends.
        for outcome in &mut outcomes {
            if let RowOutcome::Bound {
                name, request_id, ..
            } = outcome
                && let Err(error) = archive.add(&api, &token, name, request_id).await
            {
                *outcome = RowOutcome::Failed {
                    name: name.clone(),
                    problem: format!("bound as {request_id}, but not drawn: {error}"),
                };
            }
        }
        let Ok(mut state) = run.state.lock() else {
            return;
        };
        state.rows.extend(outcomes);
        state.done = state.rows.len();
        if let Some(failure) = failure {
            // The store or the pool is away: stop and say so; rows bound so far are kept.
            state.failure = Some(failure);
            break;
        }
    }
    let archive = archive.finish();
    if let Ok(mut state) = run.state.lock() {
        match archive {
            Ok(bytes) => state.archive = Some(axum::body::Bytes::from(bytes)),
            Err(error) => state.failure = Some(format!("writing the ZIP failed: {error}")),
        }
        state.finished = Some(Instant::now());
    }
    tracing::info!(run = %id, rows = run.total, "print run finished");
}

/// The ZIP a run fills as it goes: stored, not compressed (PNGs are compressed already).
struct Archive {
    writer: zip::ZipWriter<std::io::Cursor<Vec<u8>>>,
    taken: HashMap<String, usize>,
    format: ImageFormat,
    scale: u32,
}

impl Archive {
    fn new(format: ImageFormat, scale: u32) -> Self {
        Archive {
            writer: zip::ZipWriter::new(std::io::Cursor::new(Vec::new())),
            taken: HashMap::new(),
            format,
            scale,
        }
    }

    async fn add(
        &mut self,
        api: &Api,
        token: &str,
        name: &str,
        request_id: &str,
    ) -> Result<(), String> {
        let extension = self.format.extension();
        let path = format!(
            "/v1/codes/{}/qr.{extension}?scale={}",
            encode(request_id),
            self.scale
        );
        let image = api
            .get(token, &path)
            .await
            .and_then(|answer| answer.done())
            .map_err(|error| error.to_string())?;
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let entry = file_name(name, &mut self.taken, extension);
        self.writer
            .start_file(entry, options)
            .map_err(|error| error.to_string())?;
        self.writer
            .write_all(&image.body)
            .map_err(|error| error.to_string())
    }

    fn finish(self) -> Result<Vec<u8>, String> {
        self.writer
            .finish()
            .map(std::io::Cursor::into_inner)
            .map_err(|error| error.to_string())
    }
}

struct FailedRow {
    name: String,
    problem: String,
}

#[derive(Template)]
#[template(path = "print_run.html")]
struct RunPage {
    frame: Frame,
    id: String,
    total: usize,
    done: usize,
    bound: usize,
    failed: Vec<FailedRow>,
    more_failed: usize,
    finished: bool,
    failure: Option<String>,
    percent: usize,
    seconds: u64,
    format: &'static str,
}

fn find(console: &Console, visit: &Visit, id: &str) -> Result<Arc<Run>, ConsoleError> {
    console.print_runs.get(id, visit.tenant()).ok_or_else(|| {
        ConsoleError::NotFound(
            "no such print run here: runs are kept by the process that ran them, for a day".into(),
        )
    })
}

pub async fn status(
    State(console): State<Arc<Console>>,
    visit: Visit,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let run = find(&console, &visit, &id)?;
    let state = run
        .state
        .lock()
        .map(|state| state.clone())
        .unwrap_or_default();
    let failed: Vec<FailedRow> = state
        .rows
        .iter()
        .filter_map(|row| match row {
            RowOutcome::Failed { name, problem } => Some(FailedRow {
                name: name.clone(),
                problem: problem.clone(),
            }),
            RowOutcome::Bound { .. } => None,
        })
        .collect();
    let bound = state.rows.len() - failed.len();
    let more_failed = failed.len().saturating_sub(20);
    let finished_at = state.finished;
    let mut response = render(&RunPage {
        frame: Frame::new(&visit, Section::Print, "Print run"),
        total: run.total,
        done: state.done,
        bound,
        failed: failed.into_iter().take(20).collect(),
        more_failed,
        finished: finished_at.is_some(),
        failure: state.failure,
        percent: state.done * 100 / run.total.max(1),
        seconds: finished_at
            .unwrap_or_else(Instant::now)
            .duration_since(run.started)
            .as_secs(),
        format: run.format.extension(),
        id,
    });
    if finished_at.is_none() {
        // Without script the page refreshes itself while the run goes on.
        response
            .headers_mut()
            .insert("refresh", HeaderValue::from_static("2"));
    }
    Ok(response)
}

/// `GET /console/print/{run}/codes.zip`: every bound row's image, named by its column.
pub async fn zip(
    State(console): State<Arc<Console>>,
    visit: Visit,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let run = find(&console, &visit, &id)?;
    let archive = run
        .state
        .lock()
        .ok()
        .and_then(|state| state.archive.clone());
    let Some(archive) = archive else {
        return Err(ConsoleError::BadRequest(
            "the run is still binding; the ZIP is ready when it ends".into(),
        ));
    };
    let disposition = crate::pages::export::attachment(&format!("print-{id}.zip"));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/zip"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        archive,
    )
        .into_response())
}

/// `GET /console/print/{run}/codes.csv`: row, name, request id, URL (or the problem).
pub async fn csv(
    State(console): State<Arc<Console>>,
    visit: Visit,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let run = find(&console, &visit, &id)?;
    let state = run
        .state
        .lock()
        .map(|state| state.clone())
        .unwrap_or_default();
    let mut text = String::from("row,name,request_id,url,problem\r\n");
    for (index, row) in state.rows.iter().enumerate() {
        let line = match row {
            RowOutcome::Bound {
                name,
                request_id,
                url,
            } => {
                format!(
                    "{},{},{},{},",
                    index + 1,
                    field(name),
                    field(request_id),
                    field(url)
                )
            }
            RowOutcome::Failed { name, problem } => {
                format!("{},{},,,{}", index + 1, field(name), field(problem))
            }
        };
        text.push_str(&line);
        text.push_str("\r\n");
    }
    Ok(csv_response(&format!("print-{id}.csv"), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_becomes_params_named_by_a_column() {
        let rows = parse_csv(b"listing,agent\nL-1, Ann\nL-2,Bo\n", "listing").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, "L-1");
        assert_eq!(rows[0].1, json!({"listing": "L-1", "agent": "Ann"}));
        let unnamed = parse_csv(b"listing\nL-1\n", "").unwrap();
        assert_eq!(unnamed[0].0, "row-00001");
    }

    #[test]
    fn bad_csvs_are_explained() {
        assert!(parse_csv(b"listing\n", "").unwrap_err().contains("no rows"));
        assert!(
            parse_csv(b"a,b\n1,2,3\n", "")
                .unwrap_err()
                .contains("row 2")
        );
        assert!(parse_csv(b"a\n1\n", "name").unwrap_err().contains("`name`"));
    }

    #[test]
    fn file_names_are_safe_and_unique() {
        let mut taken = HashMap::new();
        assert_eq!(file_name("L-1", &mut taken, "png"), "L-1.png");
        assert_eq!(file_name("L-1", &mut taken, "png"), "L-1-2.png");
        assert_eq!(
            file_name("../../etc/passwd", &mut taken, "png"),
            "_.._etc_passwd.png"
        );
        assert_eq!(file_name("", &mut taken, "svg"), "code.svg");
    }
}
