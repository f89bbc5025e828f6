#include "server/metrics_endpoint.h"

#include <utility>

namespace flexvqa {

StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& address, std::function<std::string()> body) {
  HttpServerOptions options;
  options.listen_address = address;
  options.max_body_bytes = 16 << 10;  // A scrape has no body.
  StatusOr<std::unique_ptr<HttpServer>> http =
      HttpServer::Start(options, [body = std::move(body)](httplib::Server& server) {
        server.Get("/metrics", [body](const httplib::Request&, httplib::Response& response) {
          response.set_content(body(), "text/plain; version=0.0.4; charset=utf-8");
        });
      });
  if (!http.ok()) return http.status();
  return std::unique_ptr<MetricsEndpoint>(new MetricsEndpoint(std::move(http).value()));
}

}  // namespace flexvqa
