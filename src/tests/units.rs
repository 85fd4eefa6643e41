//! Plain `#[test]`s of the pure helpers: they run in the test binary itself, without
//! a Postgres (quoting is Postgres' own `quote_identifier`, tested through SQL).

use crate::committed::application_name;
use crate::engine::Mode;
use crate::error::BackfillError;
use crate::runs::{BatchSettings, Progress, ADAPTIVE_MAX, ADAPTIVE_MIN};
use crate::sql::{Statement, Value};
use crate::writer::Changes;

#[test]
fn positional_placeholders_count_the_values_added() {
    let mut st = Statement::new();
    assert_eq!(st.param(Value::text("a")), "$1");
    assert_eq!(st.param(Value::int8(7)), "$2");
    assert_eq!(st.params.len(), 2);
}

#[test]
fn text_array_placeholders_read_one_array_and_keep_identifiers_as_written() {
    let mut st = Statement::with_text_array();
    let first = st.param(Value::text("x"));
    let second = st.param(Value::Int4(Some(5)));
    let third = st.param(Value::Bool(Some(true)));
    let fourth = st.param(Value::Float8(Some(0.1)));
    let fifth = st.param(Value::Text(None));
    // A quoted identifier with a `$1` inside is SQL text: nothing rewrites it.
    st.sql = format!("SELECT t.\"org$1\", {first}, {second}, {third}, {fourth}, {fifth} FROM \"t$2\" t");
    let (sql, params) = st.into_text_array().expect("every value has a text form");
    assert_eq!(
        sql,
        "SELECT t.\"org$1\", ($1::pg_catalog.text[])[1], ($1::pg_catalog.text[])[2], ($1::pg_catalog.text[])[3], \
         ($1::pg_catalog.text[])[4], ($1::pg_catalog.text[])[5] FROM \"t$2\" t"
    );
    assert_eq!(
        params,
        vec![Some("x".to_string()), Some("5".to_string()), Some("true".to_string()), Some("0.1".to_string()), None]
    );
}

#[test]
fn a_value_without_a_text_form_cannot_travel_in_a_text_array() {
    let mut st = Statement::with_text_array();
    st.param(Value::TextArray(vec![Some("a".into())]));
    assert!(matches!(st.into_text_array(), Err(BackfillError::Internal(_))));
    // Nor can a positional statement be packed.
    assert!(Statement::new().into_text_array().is_err());
}

#[test]
fn a_float_travels_as_text_that_reads_back_as_the_same_float() {
    for value in [0.1_f64, 1.0 / 3.0, 131.472_913, 1e-300, f64::MAX] {
        let mut st = Statement::with_text_array();
        st.param(Value::Float8(Some(value)));
        let (_, params) = st.into_text_array().expect("a float has a text form");
        let text = params[0].clone().expect("not NULL");
        assert_eq!(text.parse::<f64>().expect("parses"), value);
    }
}

#[test]
fn a_batch_knows_its_key_range_from_its_ends() {
    let changes = Changes { key: vec![Some("3".into()), Some("7".into()), Some("12".into())], ..Changes::default() };
    assert_eq!(changes.key_range(), Some(("3".to_string(), "12".to_string())));
    assert_eq!(Changes::default().key_range(), None);
}

#[test]
fn batch_settings_default_for_null_and_refuse_nonsense() {
    // A NULL batch size is adaptive, starting at 1000; NULL elsewhere is the default.
    let adaptive = BatchSettings::new(None, None, None, None).ok();
    assert_eq!(adaptive, Some(BatchSettings { adaptive: true, ..BatchSettings::DEFAULT }));
    assert_eq!(BatchSettings::DEFAULT.batch_size, 1000);
    assert_eq!(BatchSettings::DEFAULT.target_batch_ms, 100);
    assert_eq!(
        BatchSettings::new(Some(5), Some(250), Some(10), Some(200)).ok(),
        Some(BatchSettings {
            batch_size: 5,
            adaptive: false,
            target_batch_ms: 250,
            pause_ms: 10,
            lock_timeout_ms: 200
        })
    );
    for (size, target, pause, lock) in [
        (Some(0), None, None, None),
        (None, Some(0), None, None),
        (None, None, Some(-1), None),
        (None, None, None, Some(0)),
    ] {
        assert!(matches!(BatchSettings::new(size, target, pause, lock), Err(BackfillError::BadArgument(..))));
    }
}

#[test]
fn an_adaptive_batch_moves_toward_its_target_time_within_bounds() {
    let adaptive = BatchSettings { adaptive: true, ..BatchSettings::DEFAULT };
    // 1000 rows in 50 ms against 100 ms: double; in 400 ms: at most half.
    assert_eq!(adaptive.next_size(1000, 50.0), 2000);
    assert_eq!(adaptive.next_size(1000, 400.0), 500);
    assert_eq!(adaptive.next_size(1000, 125.0), 800);
    assert_eq!(adaptive.next_size(1000, 0.0), 2000);
    assert_eq!(adaptive.next_size(ADAPTIVE_MAX, 1.0), ADAPTIVE_MAX);
    assert_eq!(adaptive.next_size(ADAPTIVE_MIN, 10_000.0), ADAPTIVE_MIN);
    // A fixed size stays whatever the batch took.
    assert_eq!(BatchSettings::DEFAULT.next_size(1000, 10_000.0), 1000);
}

#[test]
fn an_error_names_its_sqlstate_in_five_characters() {
    assert_eq!(BackfillError::Busy("x".into(), "y".into()).sqlstate_text(), "55P03");
    assert_eq!(BackfillError::UnknownRun(1).sqlstate_text(), "42704");
    assert_eq!(BackfillError::Internal("x".into()).sqlstate_text(), "XX000");
}

#[test]
fn a_run_names_itself_within_application_names_bound() {
    assert_eq!(application_name(12, "public.customers"), "tenant_backfill run 12 (public.customers)");
    let long = application_name(1, &"é".repeat(60));
    assert!(long.len() <= 63 && long.starts_with("tenant_backfill run 1 ("));
}

#[test]
fn modes_read_back_as_they_print() {
    for mode in [Mode::Fill, Mode::Reassign] {
        assert_eq!(Mode::parse(Some(mode.as_str())).ok(), Some(mode));
    }
    assert!(Mode::parse(Some("Fill")).is_err());
    assert!(Mode::parse(None).is_err());
}

#[test]
fn progress_is_a_percentage_and_a_rate() {
    let p = Progress {
        status: "running".into(),
        rows_done: 25,
        rows_total: 100,
        rows_changed: 20,
        left_for_review: 5,
        seconds: 0.5,
    };
    assert_eq!(p.percent(), 25.0);
    assert_eq!(p.rows_per_second(), 50.0);
    let empty = Progress {
        status: "done".into(),
        rows_done: 0,
        rows_total: 0,
        rows_changed: 0,
        left_for_review: 0,
        seconds: 0.0,
    };
    assert_eq!(empty.percent(), 100.0);
    assert_eq!(empty.rows_per_second(), 0.0);
}
