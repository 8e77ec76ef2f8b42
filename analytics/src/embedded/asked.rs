//! The questions asked lately, so that a merge can answer them of the file it makes before
//! they are asked again.
//!
//! A merge of today's files replaces files whose answers are kept with one of whose answers
//! none is: without this, the next question of each kind reads every row of the new file,
//! and late in a busy day that is millions of rows a question, at the moment the dashboards
//! ask. The merge puts them to the file itself, on its own threads (below the API's), before
//! the file takes the place of its inputs, and hands the answers over with it.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, NaiveDate, Utc};

use crate::query::ScansQuery;

/// Questions of different shapes remembered at most (a console page asks about a dozen).
const REMEMBERED: usize = 64;
/// How long a question is remembered after it was last asked, in minutes.
const REMEMBERED_MINUTES: i64 = 15;
/// A range that ends this close to the moment it was asked (seconds) ends "now": the API's
/// default, or a console that sends its own clock. Asked again later, it ends later.
const ENDS_NOW_SECONDS: i64 = 60;

/// A question and the moment it was last asked.
type Question = (ScansQuery, DateTime<Utc>);

/// The questions asked lately, each shape once. Cheap to clone (one list behind it).
#[derive(Debug, Clone, Default)]
pub struct Asked {
    lately: Arc<Mutex<Vec<Question>>>,
}

impl Asked {
    /// Remembers `query`, asked `at`.
    pub fn record(&self, query: &ScansQuery, at: DateTime<Utc>) {
        let mut lately = self.lately.lock().unwrap_or_else(PoisonError::into_inner);
        lately.retain(|(_, asked)| at - *asked < Duration::minutes(REMEMBERED_MINUTES));
        if let Some(slot) = lately.iter_mut().find(|(seen, _)| same_shape(seen, query)) {
            *slot = (query.clone(), at);
            return;
        }
        if lately.len() >= REMEMBERED
            && let Some(oldest) = (0..lately.len()).min_by_key(|index| lately[*index].1)
        {
            lately.swap_remove(oldest);
        }
        lately.push((query.clone(), at));
    }

    /// The questions about `tenant`'s `day` asked lately, as they would be asked at `now`: a
    /// range that ended when it was asked is moved on to end at `now` or later.
    pub fn about(&self, tenant: &str, day: NaiveDate, now: DateTime<Utc>) -> Vec<ScansQuery> {
        let Some(day_start) = day.and_hms_opt(0, 0, 0).map(|start| start.and_utc()) else {
            return Vec::new();
        };
        let day_end = day_start + Duration::days(1);
        let lately = self.lately.lock().unwrap_or_else(PoisonError::into_inner);
        lately
            .iter()
            .filter(|(query, asked)| {
                query.tenant.as_str() == tenant
                    && now - *asked < Duration::minutes(REMEMBERED_MINUTES)
            })
            .map(|(query, asked)| {
                let mut query = query.clone();
                if (query.to - *asked).abs() <= Duration::seconds(ENDS_NOW_SECONDS) {
                    let later = now - *asked;
                    query.from += later;
                    query.to = (query.to + later).max(now);
                }
                query
            })
            .filter(|query| query.from < day_end && day_start < query.to)
            .collect()
    }
}

/// Whether two queries ask the same of a file: all but where the range lies and how many
/// groups are answered (a file's answer holds every group).
fn same_shape(a: &ScansQuery, b: &ScansQuery) -> bool {
    a.tenant == b.tenant
        && a.tz == b.tz
        && a.granularity == b.granularity
        && a.group_by == b.group_by
        && a.filters == b.filters
        && a.bots == b.bots
        && a.to - a.from == b.to - b.from
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use chrono_tz::Tz;
    use records::Tenant;

    use super::*;
    use crate::query::{Dimension, Granularity};

    fn last_days(days: i64, to: DateTime<Utc>, group_by: Option<Dimension>) -> ScansQuery {
        ScansQuery {
            tenant: Tenant::parse("acme").expect("a tenant"),
            from: to - Duration::days(days),
            to,
            tz: Tz::UTC,
            granularity: Granularity::Hour,
            group_by,
            filters: Vec::new(),
            bots: false,
            limit: 10,
        }
    }

    fn at(hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, hour, minute, 0)
            .single()
            .expect("a time")
    }

    #[test]
    fn a_range_that_ended_when_asked_is_moved_on_and_a_fixed_one_is_not() {
        let asked = Asked::default();
        let day = at(0, 0).date_naive();
        asked.record(&last_days(30, at(10, 0), None), at(10, 0));
        // The same shape again replaces it; another range or group is another question.
        asked.record(&last_days(30, at(10, 5), None), at(10, 5));
        asked.record(
            &last_days(7, at(10, 5), Some(Dimension::Country)),
            at(10, 5),
        );
        // A fixed range ending yesterday says nothing of today.
        asked.record(&last_days(1, at(0, 0), Some(Dimension::Key)), at(10, 6));
        let about = asked.about("acme", day, at(10, 9));
        assert_eq!(about.len(), 2, "{about:?}");
        assert_eq!(about[0].to, at(10, 9));
        assert_eq!(about[0].from, at(10, 9) - Duration::days(30));
        assert_eq!(about[1].group_by, Some(Dimension::Country));
        assert_eq!(about[1].to, at(10, 9));
        // Of yesterday, the fixed range too.
        let yesterday = asked.about("acme", day.pred_opt().expect("a day"), at(10, 9));
        assert_eq!(yesterday.len(), 3, "{yesterday:?}");
        assert!(asked.about("other", day, at(10, 9)).is_empty());
        // Forgotten once not asked for a while.
        assert!(asked.about("acme", day, at(10, 30)).is_empty());
    }

    #[test]
    fn at_most_so_many_shapes_are_remembered_the_oldest_let_go() {
        let asked = Asked::default();
        for days in 1..=(REMEMBERED as i64 + 1) {
            asked.record(
                &last_days(days, at(10, 0), None),
                at(10, 0) + Duration::seconds(days),
            );
        }
        let about = asked.about("acme", at(0, 0).date_naive(), at(10, 1));
        assert_eq!(about.len(), REMEMBERED);
        assert!(
            about
                .iter()
                .all(|query| query.to - query.from > Duration::days(1))
        );
    }
}
