-- Issue 16: a request routed by the smart router (router:cheapest|fastest|balanced or a
-- [routing.routes] route) keeps why its model was chosen; `requested_model` keeps the name
-- the client sent and `model` the model that served. NULL: the request named its model.

ALTER TABLE usage_records ADD COLUMN route_reason text;
