//! Output formatting shared by the commands: aligned tables like Docker's
//! (header row, columns three spaces apart), human sizes and durations with
//! Docker's rules, RFC 3339 timestamps, truncation, pretty JSON, and a small
//! subset of Go templates (`{{.Field}}`, `{{.A.B}}`, `{{json .X}}`) for
//! `--format` and `inspect -f`. Pure functions only; printing is the caller's.

use serde_json::Value;

/// Lays out rows as plain aligned columns, three spaces apart, with no
/// trailing whitespace. Every line ends with a newline.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let ncols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(ncols) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate().take(ncols) {
            s.push_str(cell);
            if i + 1 < ncols {
                let pad = widths[i] - cell.chars().count() + 3;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Docker's `HumanSize`: decimal units (kB = 1000 bytes), three significant digits.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let mut text = significant(value, 3);
    if text == "1000" && unit + 1 < UNITS.len() {
        unit += 1;
        text = "1".to_string();
    }
    format!("{text}{}", UNITS[unit])
}

/// Formats with `digits` significant digits and no trailing zeros (Go's `%.3g`
/// for values below 1000).
fn significant(value: f64, digits: i32) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = (digits - 1 - magnitude).max(0) as usize;
    let s = format!("{value:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Docker's `HumanDuration` ("Less than a second", "About a minute", "3 hours", …).
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let minutes = s / 60;
    let hours = ((s as f64) / 3600.0 + 0.5) as i64;
    if s < 1 {
        "Less than a second".into()
    } else if s == 1 {
        "1 second".into()
    } else if s < 60 {
        format!("{s} seconds")
    } else if minutes == 1 {
        "About a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", s / 3600 / 24 / 365)
    }
}

/// "2 minutes ago" for a Unix time `created`, seen at `now`.
pub fn ago(created: i64, now: i64) -> String {
    format!("{} ago", human_duration(now - created))
}

/// The current Unix time in seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC timestamp with nanoseconds (`2024-01-02T03:04:05.000000006Z`),
/// the form `logs -t` prints.
pub fn rfc3339_nanos(unix_nanos: i64) -> String {
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let nanos = unix_nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Docker's `CreatedAt` form: `2024-01-02 03:04:05 +0000 UTC`.
pub fn docker_time(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let rem = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} +0000 UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Cuts `s` to at most `max` characters, ending with `…` when cut (Docker's `Ellipsis`).
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The 12-character short form of an ID, without a `sha256:` prefix.
pub fn short_id(id: &str) -> String {
    let bare = id.strip_prefix("sha256:").unwrap_or(id);
    bare.chars().take(12).collect()
}

/// Pretty JSON indented by four spaces, as `docker inspect` prints it.
pub fn pretty_json(value: &Value) -> String {
    use serde::Serialize;
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    // Serializing a Value into memory cannot fail.
    let _ = value.serialize(&mut ser);
    String::from_utf8(buf).unwrap_or_default()
}

/// How a listing command should print, from its `--format` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputFormat {
    /// The default aligned table.
    Table,
    /// One JSON object per line.
    Json,
    /// `table TEMPLATE`: a table whose columns come from the template.
    TableTemplate(String),
    /// A Go-style template applied to each row.
    Template(String),
}

impl OutputFormat {
    /// Parses `--format`: empty or `table`, `json`, `table TEMPLATE` or `TEMPLATE`.
    pub fn parse(input: Option<&str>) -> OutputFormat {
        match input.map(str::trim) {
            None | Some("") | Some("table") => OutputFormat::Table,
            Some("json") => OutputFormat::Json,
            Some(t) => match t.strip_prefix("table ") {
                Some(rest) => OutputFormat::TableTemplate(rest.to_string()),
                None => OutputFormat::Template(t.to_string()),
            },
        }
    }
}

/// A template error (unclosed action, unknown function).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid format template: {}", self.0)
    }
}

impl std::error::Error for TemplateError {}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim();
    if path == "." {
        return Some(value);
    }
    let path = path.strip_prefix('.')?;
    path.split('.').try_fold(value, |v, key| v.get(key))
}

fn render_value(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "<no value>".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            let parts: Vec<String> = items.iter().map(|i| render_value(Some(i))).collect();
            format!("[{}]", parts.join(" "))
        }
        Some(Value::Object(map)) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}:{}", render_value(Some(v))))
                .collect();
            format!("map[{}]", parts.join(" "))
        }
        Some(other) => other.to_string(),
    }
}

/// Applies a Go-style template to a JSON value: `{{.Field}}`, nested
/// `{{.A.B}}`, `{{json .X}}`, `{{.}}`; `\t` and `\n` in the template are
/// taken as tab and newline, as Docker does.
pub fn render_template(template: &str, value: &Value) -> Result<String, TemplateError> {
    let template = template.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = template.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| TemplateError(format!("unclosed action in {template:?}")))?;
        let action = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        let mut words = action.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(path), None, None) if path.starts_with('.') => {
                out.push_str(&render_value(lookup(value, path)));
            }
            (Some("json"), Some(path), None) if path.starts_with('.') => {
                let v = lookup(value, path).cloned().unwrap_or(Value::Null);
                out.push_str(&v.to_string());
            }
            (Some(f @ ("upper" | "lower")), Some(path), None) if path.starts_with('.') => {
                let s = render_value(lookup(value, path));
                out.push_str(&if f == "upper" {
                    s.to_uppercase()
                } else {
                    s.to_lowercase()
                });
            }
            _ => {
                return Err(TemplateError(format!(
                    "unsupported action {{{{{action}}}}}: use {{{{.Field}}}}, {{{{.A.B}}}} or {{{{json .Field}}}}"
                )))
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Column titles of a `table TEMPLATE`: each `{{.Field}}` titled by
/// `titles(Field)`, with the text between fields dropped.
pub fn template_headers(template: &str, titles: &dyn Fn(&str) -> String) -> Vec<String> {
    let template = template.replace("\\t", "\t");
    template
        .split('\t')
        .map(|col| {
            let mut title = String::new();
            let mut rest = col;
            while let Some(start) = rest.find("{{") {
                title.push_str(&rest[..start]);
                match rest[start + 2..].find("}}") {
                    Some(end) => {
                        let action = rest[start + 2..start + 2 + end].trim();
                        let field = action.rsplit('.').next().unwrap_or(action);
                        title.push_str(&titles(field));
                        rest = &rest[start + 2 + end + 2..];
                    }
                    None => break,
                }
            }
            title.push_str(rest);
            title.trim().to_string()
        })
        .collect()
}

/// Prints rows (JSON objects with Docker's field names) in the chosen format:
/// `table` uses `header`/`cells`, `json` one object per line, templates render
/// each row. Returns the text to print.
pub fn render_rows(
    format: &OutputFormat,
    rows: &[Value],
    header: &[&str],
    cells: &dyn Fn(&Value) -> Vec<String>,
    titles: &dyn Fn(&str) -> String,
) -> Result<String, TemplateError> {
    Ok(match format {
        OutputFormat::Table => {
            let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
            table(header, &body)
        }
        OutputFormat::Json => rows.iter().map(|r| format!("{r}\n")).collect(),
        OutputFormat::Template(t) => {
            let mut out = String::new();
            for r in rows {
                out.push_str(&render_template(t, r)?);
                out.push('\n');
            }
            out
        }
        OutputFormat::TableTemplate(t) => {
            let head = template_headers(t, titles);
            let head_refs: Vec<&str> = head.iter().map(String::as_str).collect();
            let mut body = Vec::new();
            for r in rows {
                let line = render_template(t, r)?;
                body.push(line.split('\t').map(str::to_string).collect());
            }
            table(&head_refs, &body)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_with_three_spaces() {
        let t = table(
            &["CONTAINER ID", "NAMES"],
            &[
                vec!["abc".into(), "web".into()],
                vec!["0123456789ab".into(), "db".into()],
            ],
        );
        assert_eq!(
            t,
            "CONTAINER ID   NAMES\nabc            web\n0123456789ab   db\n"
        );
    }

    #[test]
    fn tables_count_characters_not_bytes_and_trim_trailing_space() {
        let t = table(&["A", "B"], &[vec!["é…".into(), "".into()]]);
        assert_eq!(t, "A    B\né…\n");
    }

    #[test]
    fn sizes_are_decimal_with_three_digits() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(1234), "1.23kB");
        assert_eq!(human_size(4_256_000), "4.26MB");
        assert_eq!(human_size(12_000_000), "12MB");
        assert_eq!(human_size(123_456_789), "123MB");
        assert_eq!(human_size(999_999), "1MB");
        assert_eq!(human_size(1_500_000_000), "1.5GB");
    }

    #[test]
    fn durations_follow_docker() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(1), "1 second");
        assert_eq!(human_duration(45), "45 seconds");
        assert_eq!(human_duration(61), "About a minute");
        assert_eq!(human_duration(150), "2 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(5 * 3600), "5 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
        assert_eq!(human_duration(20 * 86400), "2 weeks");
        assert_eq!(human_duration(90 * 86400), "3 months");
        assert_eq!(human_duration(800 * 86400), "2 years");
        assert_eq!(ago(100, 220), "2 minutes ago");
        assert_eq!(human_duration(-5), "Less than a second");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(1_704_164_645_000_000_006),
            "2024-01-02T03:04:05.000000006Z"
        );
        assert_eq!(
            rfc3339_nanos(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(docker_time(1_704_164_645), "2024-01-02 03:04:05 +0000 UTC");
    }

    #[test]
    fn ellipsis_and_short_ids() {
        assert_eq!(ellipsis("short", 20), "short");
        let cut = ellipsis("a very long command line here", 20);
        assert_eq!(cut.chars().count(), 20);
        assert!(cut.ends_with('…'));
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
    }

    #[test]
    fn templates_render_fields_paths_and_json() {
        let v = json!({"Name": "web", "State": {"Status": "running", "ExitCode": 0},
                       "Args": ["a", "b"], "Labels": {"k": "v"}});
        assert_eq!(render_template("{{.Name}}", &v).unwrap(), "web");
        assert_eq!(
            render_template("{{ .State.Status }}/{{.State.ExitCode}}", &v).unwrap(),
            "running/0"
        );
        assert_eq!(
            render_template("{{json .Args}}", &v).unwrap(),
            r#"["a","b"]"#
        );
        assert_eq!(render_template("{{.Args}}", &v).unwrap(), "[a b]");
        assert_eq!(render_template("{{.Labels}}", &v).unwrap(), "map[k:v]");
        assert_eq!(render_template("{{.Nope}}", &v).unwrap(), "<no value>");
        assert_eq!(render_template(r"{{.Name}}\t!", &v).unwrap(), "web\t!");
        assert!(render_template("{{.Name", &v).is_err());
        assert!(render_template("{{range .Args}}", &v).is_err());
    }

    #[test]
    fn output_formats_parse() {
        assert_eq!(OutputFormat::parse(None), OutputFormat::Table);
        assert_eq!(OutputFormat::parse(Some("json")), OutputFormat::Json);
        assert_eq!(
            OutputFormat::parse(Some("table {{.ID}}")),
            OutputFormat::TableTemplate("{{.ID}}".into())
        );
        assert_eq!(
            OutputFormat::parse(Some("{{.ID}}")),
            OutputFormat::Template("{{.ID}}".into())
        );
    }

    #[test]
    fn rows_render_as_table_json_and_template_table() {
        let rows = vec![json!({"ID": "abc", "Names": "web"})];
        let cells = |v: &Value| vec![render_value(v.get("ID")), render_value(v.get("Names"))];
        let titles = |f: &str| f.to_uppercase();
        let t = render_rows(
            &OutputFormat::Table,
            &rows,
            &["ID", "NAMES"],
            &cells,
            &titles,
        )
        .unwrap();
        assert_eq!(t, "ID    NAMES\nabc   web\n");
        let j = render_rows(&OutputFormat::Json, &rows, &[], &cells, &titles).unwrap();
        assert_eq!(j, "{\"ID\":\"abc\",\"Names\":\"web\"}\n");
        let tt = render_rows(
            &OutputFormat::TableTemplate(r"{{.Names}}\t{{.ID}}".into()),
            &rows,
            &[],
            &cells,
            &titles,
        )
        .unwrap();
        assert_eq!(tt, "NAMES   ID\nweb     abc\n");
    }

    #[test]
    fn pretty_json_uses_four_spaces() {
        assert_eq!(
            pretty_json(&json!([{"a": 1}])),
            "[\n    {\n        \"a\": 1\n    }\n]"
        );
    }
}
