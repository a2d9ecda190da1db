@model
Feature: EPS — endpoints follow the Pods, and the proxies follow the endpoints

  Background:
    Given a Service "voy" selecting app=voy
    And a ready Pod "enterprise-0" with app=ent on "node-a"
    And a ready Pod "voyager-0" with app=voy on "node-b"
    And a ready Pod "voyager-1" with app=voy on "node-a"
    And the cluster has settled

  Scenario: EPS-2 EPS-11 scale up: a new Pod joins the Service
    When a ready Pod "voyager-2" with app=voy starts on "node-b"
    And the cluster settles
    Then the endpoints of "voy" are "voyager-0 ready, voyager-1 ready, voyager-2 ready"
    When "enterprise-0" connects to "voy" on port 80
    Then every connection reaches "voyager-0, voyager-1, voyager-2"

  Scenario: EPS-3 scale down: a deleted Pod leaves the Service
    When Pod "voyager-1" is deleted
    And the cluster settles
    Then the endpoints of "voy" are "voyager-0 ready"
    When "enterprise-0" connects to "voy" on port 80
    Then every connection reaches "voyager-0"

  Scenario: EPS-4 PXY-2 an unready Pod stays listed but gets no traffic
    When Pod "voyager-0" becomes unready
    And the cluster settles
    Then the endpoints of "voy" are "voyager-0 unready, voyager-1 ready"
    When "enterprise-0" connects to "voy" on port 80
    Then every connection reaches "voyager-1"

  Scenario: EPS-4 PXY-2 a terminating Pod gets traffic only when no Pod is ready
    When Pod "voyager-0" starts terminating
    And the cluster settles
    Then the endpoints of "voy" are "voyager-0 terminating, voyager-1 ready"
    When "enterprise-0" connects to "voy" on port 80
    Then every connection reaches "voyager-1"
    When Pod "voyager-1" becomes unready
    And the cluster settles
    And "enterprise-0" connects to "voy" on port 80
    Then every connection reaches "voyager-0"

  Scenario: PXY-3 a Service with no usable Pod refuses connections
    When Pod "voyager-0" becomes unready
    And Pod "voyager-1" becomes unready
    And the cluster settles
    And "enterprise-0" connects to "voy" on port 80
    Then the connection is refused
