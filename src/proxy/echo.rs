//! `--upstream echo`: a built-in upstream for development and demos. It answers a chat
//! completion (or a response) whose assistant text is the JSON of the request it received —
//! exactly what promptgate would have sent to a real upstream — so prompts can be tried with no
//! key and no network.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::forward::{OutBody, UpstreamBody, UpstreamError, UpstreamResponse};

/// Characters of assistant text per streamed chunk.
const CHUNK_CHARS: usize = 48;

pub async fn answer(
    method: &Method,
    path_and_query: &str,
    body: OutBody,
) -> Result<UpstreamResponse, UpstreamError> {
    let path = path_and_query.split('?').next().unwrap_or_default();
    // Azure OpenAI's paths (`/openai/deployments/{d}/chat/completions`, `/openai/v1/responses`)
    // end like OpenAI's.
    let path = match path.strip_prefix('/') {
        Some(azure) if azure.ends_with("/chat/completions") => "chat/completions",
        Some(azure) if azure.ends_with("/responses") || azure == "openai/responses" => "responses",
        Some(azure) if azure.ends_with("/models") => "models",
        _ => path,
    };
    let bytes = match body {
        OutBody::Full(bytes) => bytes,
        OutBody::Stream(body) => axum::body::to_bytes(body, 16 * 1024 * 1024)
            .await
            .map_err(|e| UpstreamError::ClientBody(e.to_string()))?,
    };
    match (method.as_str(), path) {
        ("POST", "chat/completions") => Ok(chat(&bytes)),
        ("POST", "responses") => Ok(responses(&bytes)),
        ("GET", "models") => Ok(json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [
                {"id": "echo", "object": "model", "created": 0, "owned_by": "promptgate"}
            ]}),
        )),
        _ => Ok(json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": {
                "message": format!("the echo upstream answers `POST /v1/chat/completions`, `POST /v1/responses` and `GET /v1/models`, not `{method} /v1/{path}`"),
                "type": "invalid_request_error", "param": null, "code": "unknown_url"
            }}),
        )),
    }
}

fn json_response(status: StatusCode, value: &Value) -> UpstreamResponse {
    let body = Bytes::from(value.to_string());
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    UpstreamResponse {
        status,
        headers,
        body: UpstreamBody::Other(futures_util::stream::once(async move { Ok(body) }).boxed()),
    }
}

fn sse_response(events: Vec<String>) -> UpstreamResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    UpstreamResponse {
        status: StatusCode::OK,
        headers,
        body: UpstreamBody::Other(
            futures_util::stream::iter(events.into_iter().map(|e| Ok(Bytes::from(e)))).boxed(),
        ),
    }
}

/// Parses the request, or answers as an upstream would to a malformed one.
fn parse(bytes: &Bytes) -> Result<serde_json::Map<String, Value>, Box<UpstreamResponse>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Box::new(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"message": "the request body is not a JSON object",
                              "type": "invalid_request_error", "param": null, "code": null}}),
        ))),
    }
}

/// A rough token count (four bytes a token), so usage and cost have something to show.
fn tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

fn pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(CHUNK_CHARS)
        .map(|c| c.iter().collect())
        .collect()
}

fn chat(bytes: &Bytes) -> UpstreamResponse {
    let request = match parse(bytes) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("echo")
        .to_owned();
    let content = serde_json::to_string_pretty(&request).unwrap_or_default();
    let id = format!("chatcmpl-echo-{}", uuid::Uuid::new_v4().simple());
    let created = chrono::Utc::now().timestamp();
    let usage = json!({
        "prompt_tokens": tokens(&String::from_utf8_lossy(bytes)),
        "completion_tokens": tokens(&content),
        "total_tokens": tokens(&String::from_utf8_lossy(bytes)) + tokens(&content),
    });
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null},
                             "logprobs": null, "finish_reason": "stop"}],
                "usage": usage,
            }),
        );
    }
    let include_usage = request
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for piece in pieces(&content) {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        let c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage,
        });
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_owned());
    sse_response(events)
}

fn responses(bytes: &Bytes) -> UpstreamResponse {
    let request = match parse(bytes) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("echo")
        .to_owned();
    let text = serde_json::to_string_pretty(&request).unwrap_or_default();
    let id = format!("resp_echo{}", uuid::Uuid::new_v4().simple());
    let msg_id = format!("msg_echo{}", uuid::Uuid::new_v4().simple());
    let created = chrono::Utc::now().timestamp();
    let input_tokens = tokens(&String::from_utf8_lossy(bytes));
    let output_tokens = tokens(&text);
    let message = |text: &str| {
        json!({"type": "message", "id": msg_id, "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": []}]})
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": id, "object": "response", "created_at": created, "status": status,
            "model": model, "output": output, "usage": usage,
            "instructions": request.get("instructions").cloned().unwrap_or(Value::Null),
            "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
        })
    };
    let usage = json!({
        "input_tokens": input_tokens, "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    });
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return json_response(
            StatusCode::OK,
            &response("completed", json!([message(&text)]), usage),
        );
    }
    let mut seq = 0;
    let mut event = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        format!("event: {kind}\ndata: {data}\n\n")
    };
    let mut events = vec![event(
        "response.created",
        json!({"response": response("in_progress", json!([]), Value::Null)}),
    )];
    for piece in pieces(&text) {
        events.push(event(
            "response.output_text.delta",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []}),
        ));
    }
    events.push(event(
        "response.output_text.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
    ));
    events.push(event(
        "response.completed",
        json!({"response": response("completed", json!([message(&text)]), usage)}),
    ));
    sse_response(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(resp: UpstreamResponse) -> String {
        let chunks: Vec<_> = resp.body.collect().await;
        chunks
            .into_iter()
            .map(|c| String::from_utf8(c.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn chat_echoes_the_request_as_json() {
        let req = json!({"model": "m", "messages": [{"role": "system", "content": "S"}]});
        let resp = answer(
            &Method::POST,
            "chat/completions",
            OutBody::Full(Bytes::from(req.to_string())),
        )
        .await
        .unwrap();
        assert_eq!(resp.status, StatusCode::OK);
        let body: Value = serde_json::from_str(&collect(resp).await).unwrap();
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(serde_json::from_str::<Value>(content).unwrap(), req);
    }

    #[tokio::test]
    async fn chat_streams_chunks_that_reassemble_the_request() {
        let req = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "ünïcode ".repeat(20)}]});
        let resp = answer(
            &Method::POST,
            "chat/completions",
            OutBody::Full(Bytes::from(req.to_string())),
        )
        .await
        .unwrap();
        let text = collect(resp).await;
        assert!(text.ends_with("data: [DONE]\n\n"));
        let mut content = String::new();
        for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if line == "[DONE]" {
                break;
            }
            let chunk: Value = serde_json::from_str(line).unwrap();
            assert!(chunk.get("usage").is_none(), "usage only when asked");
            if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
                content.push_str(piece);
            }
        }
        assert_eq!(serde_json::from_str::<Value>(&content).unwrap(), req);
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        let resp = answer(&Method::POST, "embeddings", OutBody::Full(Bytes::new()))
            .await
            .unwrap();
        assert_eq!(resp.status, StatusCode::NOT_FOUND);
    }
}
