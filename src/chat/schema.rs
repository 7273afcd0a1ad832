//! JSON Schema to the TypeScript-like parameter types Harmony puts in the developer message, with
//! openai-harmony's exact layout: property order as given, `?` for optional properties, comments
//! for titles, descriptions, examples and defaults, and `oneOf` variants on their own lines.

use serde_json::Value;

fn is_enum(schema: &Value) -> bool {
    schema
        .get("enum")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

fn nullable(schema: &Value) -> bool {
    schema
        .get("nullable")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// A default value as a comment: a string in quotes as written, except that a property's (or a
/// property's variant's) enum default goes bare, while a nested union's variant writes it as JSON
/// (quoted and escaped), as openai-harmony does.
fn default_text(schema: &Value, default: &Value, in_property: bool) -> String {
    match default.as_str() {
        Some(s) if !is_enum(schema) => format!("default: \"{s}\""),
        Some(s) if in_property => format!("default: {s}"),
        _ => format!("default: {default}"),
    }
}

/// The type of `variant` with ` | null` when it is nullable and does not already say so.
fn variant_type(variant: &Value, indent: &str) -> String {
    let t = typescript(variant, indent);
    if nullable(variant) && !t.contains("null") {
        format!("{t} | null")
    } else {
        t
    }
}

/// The TypeScript type of `schema`, with nested lines indented by `indent`.
pub fn typescript(schema: &Value, indent: &str) -> String {
    if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
        let mut out = String::new();
        for v in variants {
            out.push_str(&format!("\n{indent} | "));
            out.push_str(&variant_type(v, &format!("{indent}   ")));
            let mut notes = Vec::new();
            if let Some(d) = v.get("description").and_then(Value::as_str) {
                notes.push(d.to_string());
            }
            if let Some(d) = v.get("default") {
                notes.push(default_text(v, d, false));
            }
            if !notes.is_empty() {
                out.push_str(&format!(" // {}", notes.join(" ")));
            }
        }
        return out;
    }
    if let Some(types) = schema.get("type").and_then(Value::as_array) {
        let names: Vec<&str> = types
            .iter()
            .filter_map(Value::as_str)
            .map(|t| if t == "integer" { "number" } else { t })
            .collect();
        if !names.is_empty() {
            return names.join(" | ");
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => object(schema, indent),
        Some("string") => {
            let values: Vec<String> = schema
                .get("enum")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|s| format!("\"{s}\""))
                        .collect()
                })
                .unwrap_or_default();
            if values.is_empty() {
                "string".into()
            } else {
                values.join(" | ")
            }
        }
        Some("number") | Some("integer") => "number".into(),
        Some("boolean") => "boolean".into(),
        Some("array") => match schema.get("items") {
            Some(items) => format!("{}[]", typescript(items, indent)),
            None => "Array<any>".into(),
        },
        _ => "any".into(),
    }
}

fn object(schema: &Value, indent: &str) -> String {
    let mut out = String::new();
    if let Some(d) = schema.get("description").and_then(Value::as_str) {
        out.push_str(&format!("{indent}// {d}\n"));
    }
    out.push_str("{\n");
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let props = schema.get("properties").and_then(Value::as_object);
    for (key, prop) in props.into_iter().flatten() {
        let optional = if required.contains(&key.as_str()) {
            ""
        } else {
            "?"
        };
        if let Some(t) = prop.get("title").and_then(Value::as_str) {
            out.push_str(&format!("{indent}// {t}\n{indent}//\n"));
        }
        // A property with `oneOf` writes its description and default with its variants (below);
        // one whose `oneOf` is not a list renders as a plain property without either, as
        // openai-harmony does.
        let has_one_of = prop.get("oneOf").is_some();
        let variants = prop.get("oneOf").and_then(Value::as_array);
        let desc = prop.get("description").and_then(Value::as_str);
        if !has_one_of && let Some(d) = desc {
            out.push_str(&format!("{indent}// {d}\n"));
        }
        if let Some(examples) = prop
            .get("examples")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
        {
            out.push_str(&format!("{indent}// Examples:\n"));
            for ex in examples.iter().filter_map(Value::as_str) {
                out.push_str(&format!("{indent}// - \"{ex}\"\n"));
            }
        }
        if let Some(variants) = variants {
            // The property's description goes above it unless the first variant repeats it.
            let first_desc = variants
                .first()
                .and_then(|v| v.get("description"))
                .and_then(Value::as_str);
            let desc_above = desc.filter(|d| Some(*d) != first_desc);
            if let Some(d) = desc_above {
                out.push_str(&format!("{indent}// {d}\n"));
            }
            if let Some(d) = prop.get("default") {
                out.push_str(&format!("{indent}// {}\n", default_text(prop, d, true)));
            }
            out.push_str(&format!("{indent}{key}{optional}:\n"));
            for (i, v) in variants.iter().enumerate() {
                out.push_str(&format!(
                    "{indent} | {}",
                    variant_type(v, &format!("{indent}   "))
                ));
                let mut notes = Vec::new();
                let vdesc = v.get("description").and_then(Value::as_str);
                if !(i == 0 && desc_above.is_some())
                    && let Some(d) = vdesc.filter(|d| Some(*d) != desc)
                {
                    notes.push(d.to_string());
                }
                if let Some(d) = v.get("default") {
                    notes.push(default_text(v, d, true));
                }
                if !notes.is_empty() {
                    out.push_str(&format!(" // {}", notes.join(" ")));
                }
                out.push('\n');
            }
            out.push_str(&format!("{indent},\n"));
            continue;
        }
        out.push_str(&format!(
            "{indent}{key}{optional}: {},",
            variant_type(prop, &format!("{indent}    "))
        ));
        if let Some(d) = prop.get("default").filter(|_| !has_one_of) {
            out.push_str(&format!(
                " {}",
                default_text(prop, d, true).replacen("default:", "// default:", 1)
            ));
        }
        out.push('\n');
    }
    out.push_str(&format!("{indent}}}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn object_with_optional_enum_and_default() {
        let s = json!({"type": "object", "properties": {
            "location": {"type": "string", "description": "City"},
            "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
            "days": {"type": "integer", "default": 3}
        }, "required": ["location"]});
        assert_eq!(
            typescript(&s, ""),
            "{\n// City\nlocation: string,\nunit?: \"c\" | \"f\", // default: c\ndays?: number, // default: 3\n}"
        );
    }
}
