//! Rendering: aligned tables with a header row for people, JSON for scripts.
use std::io::Write as _;

use clap::ValueEnum;
use serde_json::Value;

use super::CliResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns with a header row.
    Table,
    /// The API's JSON: an array for lists, an object otherwise.
    Json,
}

/// A table column: header and the field of each item it shows.
pub type Column = (&'static str, &'static str);

/// What a command produced.
#[derive(Debug, Clone)]
pub enum Output {
    /// Items shown one per row.
    List {
        items: Vec<Value>,
        columns: &'static [Column],
    },
    /// One resource shown as FIELD/VALUE rows.
    Object(Value),
    /// A confirmation for people; `json` for scripts.
    Message { text: String, json: Value },
}

impl Output {
    pub fn print(self, format: Format) -> CliResult<()> {
        let text = self.render(format);
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(())
    }

    pub fn render(&self, format: Format) -> String {
        match (format, self) {
            (Format::Json, Self::List { items, .. }) => json(&Value::Array(items.clone())),
            (Format::Json, Self::Object(v)) | (Format::Json, Self::Message { json: v, .. }) => {
                json(v)
            }
            (Format::Table, Self::List { items, columns }) => {
                let rows = items
                    .iter()
                    .map(|i| columns.iter().map(|(_, k)| cell(&i[*k])).collect())
                    .collect::<Vec<Vec<String>>>();
                table(&columns.iter().map(|(h, _)| *h).collect::<Vec<_>>(), &rows)
            }
            (Format::Table, Self::Object(v)) => {
                let rows = match v {
                    Value::Object(m) => m
                        .iter()
                        .map(|(k, v)| vec![k.clone(), cell(v)])
                        .collect::<Vec<_>>(),
                    other => vec![vec!["value".to_owned(), cell(other)]],
                };
                table(&["FIELD", "VALUE"], &rows)
            }
            (Format::Table, Self::Message { text, .. }) => format!("{text}\n"),
        }
    }
}

fn json(v: &Value) -> String {
    // Serializing a Value cannot fail; fall back to the compact form regardless.
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()) + "\n"
}

/// One value as table text: port mappings as `80:8080/TCP` (`80/TCP` when only the client
/// side is shown), tags as `k=v`, lists joined by commas, null as empty.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(item).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn item(v: &Value) -> String {
    if let Some(c) = v.get("client_port") {
        // A consumer is shown the client side only.
        return match v.get("server_port").filter(|s| !s.is_null()) {
            Some(s) => format!("{}:{}/{}", cell(c), cell(s), cell(&v["protocol"])),
            None => format!("{}/{}", cell(c), cell(&v["protocol"])),
        };
    }
    if let Some(k) = v.get("key") {
        let val = v.get("value").or_else(|| v.get("values"));
        return match val.map(cell) {
            Some(s) if !s.is_empty() => format!("{}={s}", cell(k)),
            _ => cell(k),
        };
    }
    match v {
        Value::Object(_) => v.to_string(),
        other => cell(other),
    }
}

/// Left-aligned columns separated by two spaces, header first.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(c.chars().count());
            if i + 1 < headers.len() {
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_and_format_nested_values() {
        let out = Output::List {
            items: vec![
                json!({"id": "a", "ports": [{"client_port": 80, "server_port": 8080, "protocol": "TCP"}], "tags": [{"key": "k", "value": "v"}]}),
                json!({"id": "bbbb", "ports": [], "tags": null}),
                json!({"id": "c", "ports": [{"client_port": 53, "protocol": "UDP"}], "tags": []}),
            ],
            columns: &[("ID", "id"), ("PORTS", "ports"), ("TAGS", "tags")],
        };
        assert_eq!(
            out.render(Format::Table),
            "ID    PORTS        TAGS\na     80:8080/TCP  k=v\nbbbb\nc     53/UDP\n"
        );
        let v: Value = serde_json::from_str(&out.render(Format::Json)).unwrap();
        assert_eq!(v[1]["id"], "bbbb");
    }
}
