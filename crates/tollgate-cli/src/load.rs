//! `tollgate features load FILE`: bulk-loads feature groups from CSV (columns `entity_type`,
//! `entity_id`, `group`, then one column per feature; values that parse as JSON are stored as
//! such, others as strings; empty cells are left out) or JSONL (one
//! `{"entity_type", "entity_id", "group", "features": {...}, "ttl_seconds"}` a line).
//! Writes run many at once on the multiplexed connection; every bad row is reported with its
//! line number, none is dropped silently.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use serde_json::Value;
use tollgate_server::Gateway;
use tollgate_server::auth::tenant_scoped;

struct Row {
    line: usize,
    entity_type: String,
    entity_id: String,
    group: String,
    features: BTreeMap<String, Value>,
    /// The row's own TTL (absent: the command's, else `features.default_ttl_seconds`; 0: none).
    ttl_seconds: Option<u64>,
}

/// Loads `file`; returns the number of bad rows.
pub(crate) async fn load(
    gw: Arc<Gateway>,
    file: &Path,
    tenant: &str,
    concurrency: usize,
    ttl_seconds: Option<u64>,
) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let csv = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let (rows, mut bad) = if csv {
        parse_csv(&text)
    } else {
        parse_jsonl(&text)
    };
    let bar = indicatif::ProgressBar::new(rows.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let values: usize = rows.iter().map(|r| r.features.len()).sum();
    let failures: Vec<(usize, String)> = futures::stream::iter(rows)
        .map(|row| {
            let (gw, bar) = (gw.clone(), bar.clone());
            let entity_type = tenant_scoped(tenant, &row.entity_type);
            async move {
                let result = gw
                    .features
                    .put(
                        &entity_type,
                        &row.entity_id,
                        &row.group,
                        &row.features,
                        gw.features.ttl_for(row.ttl_seconds.or(ttl_seconds)),
                    )
                    .await;
                bar.inc(1);
                result.err().map(|e| (row.line, e.to_string()))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|r| async move { r })
        .collect()
        .await;
    bar.finish_and_clear();
    let took = started.elapsed().as_secs_f64().max(1e-9);
    let failed_values = failures.len();
    bad.extend(failures);
    bad.sort();
    println!(
        "loaded {} feature values in {:.2} s ({:.0} values/s); {} bad row(s)",
        values.saturating_sub(failed_values),
        took,
        values as f64 / took,
        bad.len()
    );
    for (line, message) in &bad {
        println!("line {line}: {message}");
    }
    Ok(bad.len())
}

fn parse_jsonl(text: &str) -> (Vec<Row>, Vec<(usize, String)>) {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct JsonRow {
        entity_type: String,
        entity_id: String,
        group: String,
        features: BTreeMap<String, Value>,
        #[serde(default)]
        ttl_seconds: Option<u64>,
    }
    let (mut rows, mut bad) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<JsonRow>(line) {
            Ok(r) => rows.push(Row {
                line: i + 1,
                entity_type: r.entity_type,
                entity_id: r.entity_id,
                group: r.group,
                features: r.features,
                ttl_seconds: r.ttl_seconds,
            }),
            Err(e) => bad.push((i + 1, format!("not a feature row: {e}"))),
        }
    }
    (rows, bad)
}

fn parse_csv(text: &str) -> (Vec<Row>, Vec<(usize, String)>) {
    let (mut rows, mut bad) = (Vec::new(), Vec::new());
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_owned).collect(),
        Err(e) => return (rows, vec![(1, format!("unreadable header: {e}"))]),
    };
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(ti), Some(ii), Some(gi)) =
        (column("entity_type"), column("entity_id"), column("group"))
    else {
        return (
            rows,
            vec![(
                1,
                "the header needs entity_type, entity_id and group columns".into(),
            )],
        );
    };
    for record in reader.records() {
        let (line, record) = match record {
            Ok(r) => (r.position().map_or(0, |p| p.line() as usize), r),
            Err(e) => {
                bad.push((
                    e.position().map_or(0, |p| p.line() as usize),
                    format!("unreadable row: {e}"),
                ));
                continue;
            }
        };
        if record.len() != header.len() {
            bad.push((
                line,
                format!("{} cells for {} columns", record.len(), header.len()),
            ));
            continue;
        }
        let features: BTreeMap<String, Value> = header
            .iter()
            .zip(record.iter())
            .enumerate()
            .filter(|(i, (_, cell))| ![ti, ii, gi].contains(i) && !cell.is_empty())
            .map(|(_, (name, cell))| {
                (
                    name.clone(),
                    serde_json::from_str(cell).unwrap_or_else(|_| Value::String(cell.to_owned())),
                )
            })
            .collect();
        rows.push(Row {
            line,
            entity_type: record[ti].to_owned(),
            entity_id: record[ii].to_owned(),
            group: record[gi].to_owned(),
            features,
            ttl_seconds: None,
        });
    }
    (rows, bad)
}
