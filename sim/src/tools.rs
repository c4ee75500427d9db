//! Tool calling on the chat endpoint: `tools`, `tool_choice`, and the call
//! the simulated model makes when the choice forces one.
//!
//! Groq's rules, with its messages: `tools` is an array of up to 128
//! `{"type": "function", "function": {"name", "description"?, "parameters"?}}`
//! (names of 1-64 letters, digits, `_` or `-`); `tool_choice` is `"none"`,
//! `"auto"`, `"required"` or `{"type": "function", "function": {"name"}}`,
//! and a forced choice needs `tools` holding that name. A forced choice
//! (`"required"` calls the first tool) is answered with one tool call whose
//! arguments are made from the tool's `parameters` schema: every required
//! property (every property when none is listed), `const`, the first `enum`
//! value, the `default`, or the least value its type and bounds allow
//! (strings `"simulated"` fitted to their length bounds and common
//! formats). `"none"` and `"auto"` answer in words: the simulated model
//! never chooses a tool on its own, so a client reaches its tool path with a
//! forced choice.

use serde_json::{Map, Value, json};

use crate::groq::GroqError;

/// Groq's limit on `tools`.
const MAX_TOOLS: usize = 128;
/// Schemas nest at most this deep before arguments stop descending.
const MAX_DEPTH: usize = 8;

/// A tool the request offers.
#[derive(Debug, Clone)]
pub(crate) struct Tool {
    pub(crate) name: String,
    parameters: Value,
}

impl Tool {
    /// The call's `arguments`: a JSON object valid against simple schemas.
    pub(crate) fn arguments(&self) -> String {
        let schema = if self.parameters.is_null() {
            json!({"type": "object", "properties": {}})
        } else {
            self.parameters.clone()
        };
        match value_for(&schema, 0) {
            Value::Object(map) => Value::Object(map).to_string(),
            _ => "{}".to_owned(),
        }
    }
}

/// Validates `tools`, `tool_choice` and `parallel_tool_calls`; the tool to
/// call when the choice forces one.
pub(crate) fn forced_tool(body: &Map<String, Value>) -> Result<Option<Tool>, GroqError> {
    let tools = tools(body)?;
    if let Some(parallel) = present(body, "parallel_tool_calls")
        && !parallel.is_boolean()
    {
        return Err(GroqError::invalid(
            "'parallel_tool_calls' : value must be a boolean",
        ));
    }
    let name = match present(body, "tool_choice") {
        None => return Ok(None),
        Some(Value::String(choice)) => match choice.as_str() {
            "none" | "auto" => return Ok(None),
            "required" => None,
            _ => {
                return Err(GroqError::invalid(
                    "Only allowed string values for 'tool_choice' are none, auto, and required",
                ));
            }
        },
        Some(Value::Object(choice)) => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            match (choice.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => Some(name),
                _ => return Err(shape_error()),
            }
        }
        Some(_) => return Err(shape_error()),
    };
    if tools.is_empty() {
        return Err(GroqError::invalid(
            "'tool_choice' is only allowed when 'tools' are specified",
        ));
    }
    match name {
        None => Ok(tools.into_iter().next()),
        Some(name) => tools
            .into_iter()
            .find(|t| t.name == name)
            .map(Some)
            .ok_or_else(|| GroqError::invalid("requested tool does not exist")),
    }
}

fn shape_error() -> GroqError {
    GroqError::invalid(
        "'tool_choice' : value must be string (auto or none) or an object like '{'type': 'function', 'function':{'name':'my_function'}}'",
    )
}

fn present<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

fn tools(body: &Map<String, Value>) -> Result<Vec<Tool>, GroqError> {
    let items = match present(body, "tools") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(GroqError::invalid("'tools' : value must be an array")),
    };
    if items.len() > MAX_TOOLS {
        return Err(GroqError::invalid(format!(
            "'tools' : maximum number of items is {MAX_TOOLS}"
        )));
    }
    let mut tools = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(item) = item.as_object() else {
            return Err(GroqError::invalid(format!(
                "'tools.{i}' : value must be an object"
            )));
        };
        if item.get("type").and_then(Value::as_str) != Some("function") {
            return Err(GroqError::invalid(format!(
                "'tools.{i}.type' : value must be one of [function]"
            )));
        }
        let Some(function) = item.get("function").and_then(Value::as_object) else {
            return Err(GroqError::invalid(format!(
                "'tools.{i}.function' : property 'function' is missing"
            )));
        };
        let Some(name) = function.get("name").and_then(Value::as_str) else {
            return Err(GroqError::invalid(format!(
                "'tools.{i}.function.name' : property 'name' is missing"
            )));
        };
        let valid_name = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            return Err(GroqError::invalid(format!(
                "'tools.{i}.function.name' : string must match the pattern ^[a-zA-Z0-9_-]{{1,64}}$"
            )));
        }
        let parameters = function.get("parameters").cloned().unwrap_or(Value::Null);
        if !(parameters.is_null() || parameters.is_object()) {
            return Err(GroqError::invalid(format!(
                "'tools.{i}.function.parameters' : value must be an object"
            )));
        }
        tools.push(Tool {
            name: name.to_owned(),
            parameters,
        });
    }
    Ok(tools)
}

/// A value valid against `schema`, as far as simple schemas go.
fn value_for(schema: &Value, depth: usize) -> Value {
    let Some(schema) = schema.as_object() else {
        return json!("simulated");
    };
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    if let Some(value) = schema.get("const") {
        return value.clone();
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(value) = schema.get("default") {
        return value.clone();
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        if let Some(options) = schema.get(combinator).and_then(Value::as_array) {
            let choice = options
                .iter()
                .find(|o| o.get("type").and_then(Value::as_str) != Some("null"))
                .or_else(|| options.first());
            if let Some(choice) = choice {
                return value_for(choice, depth + 1);
            }
        }
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| *k != "null")
            .unwrap_or("null"),
        _ if schema.contains_key("properties") => "object",
        _ if schema.contains_key("items") => "array",
        _ => "string",
    };
    match kind {
        "object" => object_for(schema, depth),
        "array" => {
            let count = bound(schema, "minItems").unwrap_or(0.0) as usize;
            let item = schema.get("items").cloned().unwrap_or(Value::Null);
            Value::Array(
                (0..count.min(16))
                    .map(|_| value_for(&item, depth + 1))
                    .collect(),
            )
        }
        "integer" => json!(least_number(schema, 1.0).ceil() as i64),
        "number" => json!(least_number(schema, 0.5)),
        "boolean" => json!(false),
        "null" => Value::Null,
        _ => json!(string_for(schema)),
    }
}

fn object_for(schema: &Map<String, Value>, depth: usize) -> Value {
    let empty = Map::new();
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let required: Option<Vec<&str>> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect());
    let mut out = Map::new();
    for (name, property) in properties {
        if required.as_ref().is_none_or(|r| r.contains(&name.as_str())) {
            out.insert(name.clone(), value_for(property, depth + 1));
        }
    }
    Value::Object(out)
}

fn bound(schema: &Map<String, Value>, name: &str) -> Option<f64> {
    schema.get(name).and_then(Value::as_f64)
}

/// The least number the bounds allow (0 when they allow it); `step` past an
/// exclusive minimum or below an exclusive maximum.
fn least_number(schema: &Map<String, Value>, step: f64) -> f64 {
    let low =
        bound(schema, "minimum").or_else(|| bound(schema, "exclusiveMinimum").map(|m| m + step));
    let high =
        bound(schema, "maximum").or_else(|| bound(schema, "exclusiveMaximum").map(|m| m - step));
    match (low, high) {
        (Some(low), _) => low,
        (None, Some(high)) => high.min(0.0),
        (None, None) => 0.0,
    }
}

fn string_for(schema: &Map<String, Value>) -> String {
    let text = match schema.get("format").and_then(Value::as_str) {
        Some("date") => "2024-01-01",
        Some("date-time") => "2024-01-01T00:00:00Z",
        Some("time") => "00:00:00",
        Some("email") => "someone@example.com",
        Some("uri" | "url") => "https://example.com/",
        Some("uuid") => "00000000-0000-4000-8000-000000000000",
        _ => "simulated",
    };
    let mut text: Vec<char> = text.chars().collect();
    let min = bound(schema, "minLength").unwrap_or(0.0) as usize;
    while text.len() < min.min(4_096) {
        text.push('x');
    }
    if let Some(max) = bound(schema, "maxLength") {
        text.truncate(max as usize);
    }
    text.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(parameters: Value) -> Value {
        let tool = Tool {
            name: "t".to_owned(),
            parameters,
        };
        serde_json::from_str(&tool.arguments()).expect("JSON")
    }

    #[test]
    fn arguments_follow_simple_schemas() {
        let args = tool(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 3},
                "code": {"type": "string", "minLength": 12},
                "when": {"type": "string", "format": "date"},
                "n": {"type": "integer", "exclusiveMinimum": 4},
                "below": {"type": "number", "maximum": -2},
                "kind": {"enum": ["a", "b"]},
                "fixed": {"const": 7},
                "either": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
                "list": {"type": "array", "minItems": 2, "items": {"type": "integer", "minimum": 3}},
                "inner": {"type": "object", "properties": {"x": {"type": "number"}}},
                "skipped": {"type": "string"},
            },
            "required": ["name", "code", "when", "n", "below", "kind", "fixed", "either", "list", "inner"],
        }));
        assert_eq!(
            args,
            json!({
                "name": "sim", "code": "simulatedxxx", "when": "2024-01-01", "n": 5,
                "below": -2.0, "kind": "a", "fixed": 7, "either": false,
                "list": [3, 3], "inner": {"x": 0.0},
            })
        );
        assert_eq!(tool(Value::Null), json!({}));
        assert_eq!(tool(json!({"type": "object"})), json!({}));
    }
}
