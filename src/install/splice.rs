//! Splicing shunt's entry into a primary CNI configuration and taking it out again: pure
//! functions over JSON, with no file system in sight.
//!
//! The rules: shunt's entry (any plugin whose `type` is `shunt`) is removed wherever it is and
//! appended at the end of `plugins`; everything else (fields, plugins, their order, key order
//! inside them) is kept as it was. A single-plugin `.conf` becomes a list holding that plugin
//! unchanged, named and versioned like the runtime does when it reads a `.conf`.

use serde_json::{Map, Value};

/// The `type` that marks shunt's entry.
pub const PLUGIN_TYPE: &str = "shunt";

/// The kind of file a primary configuration was read from, by extension, as libcni does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `.conflist`: `{"name", "cniVersion", "plugins": [...]}`.
    List,
    /// `.conf` or `.json`: one plugin's configuration.
    Single,
}

impl Form {
    pub fn of(file_name: &str) -> Option<Form> {
        let ext = file_name.rsplit_once('.')?.1;
        match ext {
            "conflist" => Some(Form::List),
            "conf" | "json" => Some(Form::Single),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpliceError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("has no plugins")]
    NoPlugins,
    #[error("field {0} is missing or has the wrong type")]
    Field(&'static str),
}

/// A primary configuration as a list, whatever form it was read in.
#[derive(Debug, Clone, PartialEq)]
pub struct Primary {
    pub form: Form,
    pub list: Map<String, Value>,
}

impl Primary {
    /// Parses a file's contents the way the runtime would load it; anything the runtime would
    /// skip (invalid JSON, no plugins, a list without `plugins`) is an error.
    pub fn parse(form: Form, bytes: &[u8]) -> Result<Primary, SpliceError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| SpliceError::Json(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(SpliceError::NotObject);
        };
        let list = match form {
            Form::List => {
                match obj.get("plugins") {
                    Some(Value::Array(p)) if !p.is_empty() => {}
                    Some(Value::Array(_)) => return Err(SpliceError::NoPlugins),
                    _ => return Err(SpliceError::Field("plugins")),
                }
                obj
            }
            Form::Single => {
                if !obj.get("type").is_some_and(Value::is_string) {
                    return Err(SpliceError::Field("type"));
                }
                single_to_list(obj)
            }
        };
        Ok(Primary { form, list })
    }

    /// The plugins in chain order.
    pub fn plugins(&self) -> &[Value] {
        self.list
            .get("plugins")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Whether shunt's entry is the last plugin, exactly once, equal to `entry`.
    pub fn is_spliced(&self, entry: &Map<String, Value>) -> bool {
        let plugins = self.plugins();
        plugins.iter().filter(|p| is_shunt(p)).count() == 1
            && plugins.last().and_then(Value::as_object) == Some(entry)
    }

    /// Whether any shunt entry is in the chain.
    pub fn has_shunt(&self) -> bool {
        self.plugins().iter().any(is_shunt)
    }
}

fn is_shunt(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// The list a `.conf` stands for: its own name and cniVersion on the list, the plugin kept
/// byte-for-byte the same object.
fn single_to_list(conf: Map<String, Value>) -> Map<String, Value> {
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(v) = conf.get(key) {
            list.insert(key.to_owned(), v.clone());
        }
    }
    list.insert(
        "plugins".to_owned(),
        Value::Array(vec![Value::Object(conf)]),
    );
    list
}

/// The list with every shunt entry removed and `entry` appended at the end.
pub fn splice(list: &Map<String, Value>, entry: &Map<String, Value>) -> Map<String, Value> {
    let mut out = unsplice(list);
    if let Some(Value::Array(plugins)) = out.get_mut("plugins") {
        plugins.push(Value::Object(entry.clone()));
    }
    out
}

/// The list with every shunt entry removed.
pub fn unsplice(list: &Map<String, Value>) -> Map<String, Value> {
    let mut out = list.clone();
    if let Some(Value::Array(plugins)) = out.get_mut("plugins") {
        plugins.retain(|p| !is_shunt(p));
    }
    out
}

/// Back to a single `.conf`, when a list that was converted from one holds only that plugin.
pub fn list_to_single(list: &Map<String, Value>) -> Option<Map<String, Value>> {
    match list
        .get("plugins")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([Value::Object(only)]) => Some(only.clone()),
        _ => None,
    }
}

/// How shunt writes JSON: two-space indentation and a final newline, stable from run to run, so
/// splicing what it wrote gives the same bytes.
pub fn render(value: &Map<String, Value>) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> Map<String, Value> {
        json!({"type": "shunt", "capabilities": {"io.kubernetes.cri.pod-annotations": true}})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn a_stale_entry_anywhere_is_replaced_by_one_at_the_end() {
        let list = json!({"name": "k8s", "plugins": [
            {"type": "calico"}, {"type": "shunt", "old": true}, {"type": "portmap"}
        ]});
        let list = Primary::parse(Form::List, list.to_string().as_bytes()).expect("parse");
        assert!(!list.is_spliced(&entry()));
        let spliced = splice(&list.list, &entry());
        let types: Vec<_> = spliced["plugins"]
            .as_array()
            .map(|p| p.iter().map(|p| p["type"].clone()).collect())
            .unwrap_or_default();
        assert_eq!(
            types,
            vec![json!("calico"), json!("portmap"), json!("shunt")]
        );
        let again = Primary {
            form: Form::List,
            list: spliced.clone(),
        };
        assert!(again.is_spliced(&entry()));
        assert_eq!(splice(&spliced, &entry()), spliced);
    }

    #[test]
    fn what_the_runtime_would_skip_is_refused() {
        assert!(Primary::parse(Form::List, b"{\"plugins\": [").is_err());
        assert_eq!(
            Primary::parse(Form::List, br#"{"name":"x","plugins":[]}"#),
            Err(SpliceError::NoPlugins)
        );
        assert_eq!(
            Primary::parse(Form::List, br#"{"name":"x"}"#),
            Err(SpliceError::Field("plugins"))
        );
        assert_eq!(
            Primary::parse(Form::Single, br#"{"name":"x"}"#),
            Err(SpliceError::Field("type"))
        );
        assert_eq!(
            Primary::parse(Form::Single, b"[]"),
            Err(SpliceError::NotObject)
        );
    }
}
