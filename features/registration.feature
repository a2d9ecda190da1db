@model
Feature: REG — registration: a Service gets a ClusterIP and a name in the cluster DNS

  Background:
    Given a ready Pod "enterprise-0" with app=ent on "node-a"

  Scenario: REG-2 DNS-2 a new Service gets a ClusterIP and its name resolves to it
    Given a Service "voy" selecting app=voy
    And the cluster has settled
    When "enterprise-0" resolves "voy.default.svc.cluster.local"
    Then the answer is the ClusterIP of "voy"

  Scenario: REG-4 DNS-20 a deleted Service's name stops resolving and its address stops forwarding
    Given a Service "voy" selecting app=voy
    And a ready Pod "voyager-0" with app=voy on "node-b"
    And the cluster has settled
    When the Service "voy" is deleted
    And the cluster settles
    And "enterprise-0" resolves "voy"
    Then the name does not resolve
